"""Item response theory estimates of a candidate's full score from a few of its examples:
tinyBenchmarks' p-IRT and gp-IRT (Polo et al. 2024, arXiv:2402.14992, sec. 3), which
MERGE^3 (Mencattini et al. 2025, arXiv:2502.10436) uses to make evolutionary merging's fitness
~50x cheaper.

Items are the (example, metric) pairs of the scored tasks; a candidate j has an ability
``theta_j`` (D numbers) shared by every item, and item i answers

* ``y_ij = mu_i + s_i * (a_i . theta_j + e)``, ``e ~ N(0, sigma^2)`` for a continuous per-example
  score (answer NLL per token: tinyBenchmarks binarizes such scores; a linear-Gaussian item
  keeps them, and is the maximum-likelihood factor model, fitted in closed form by an SVD);
* ``P(y_ij = 1) = sigmoid(a_i . theta_j - b_i)`` (the multidimensional 2PL model of
  tinyBenchmarks) for a score that is 0 or 1 on every example (exact match).

Fit (:func:`fit_irt`) on the per-example scores of candidates scored in full (the warmup):
standardized scores ``Z = U S V^T``; abilities ``Theta = sqrt(m) V_D^T`` (unit variance, so the
prior on a new ability is N(0, I)); loadings ``A = U_D S_D / sqrt(m)``; 2PL items by ridge
logistic regression on ``Theta``. A new candidate scored on a few items (the anchors) gets the
maximum a posteriori ability (Newton on a convex objective), and then:

* p-IRT  ``S = (sum_seen num_i + sum_unseen den_i * yhat_i) / sum_all den_i``: the seen items'
  own values plus the model's prediction for the rest (tinyBenchmarks' eq. with
  ``lambda = n_seen / N``, weighted by each item's denominator: a token-weighted NLL);
* gp-IRT ``lambda * S_anchor + (1 - lambda) * S_pIRT``, where ``S_anchor`` is the
  anchor-weighted estimate; ``lambda`` per score by K-fold cross-validation over the warmup
  candidates (least squares, clipped to [0, 1]; tinyBenchmarks sets it from a bias/variance
  heuristic on its training models).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["IrtModel", "IrtEstimator", "fit_irt"]

Stats = Mapping[str, Sequence[Sequence[float]]]  # score key -> [nums, dens] per example


def _values(stats: Stats, key: str) -> np.ndarray:
    num, den = (np.asarray(v, dtype=np.float64) for v in stats[key])
    return num / np.where(den == 0, 1.0, den)


@dataclass(frozen=True)
class IrtModel:
    """Item parameters over the examples of ``keys`` (items in key order, then example
    order). Arrays are (n,) per item except ``loadings`` (n, D)."""

    keys: tuple[str, ...]
    sizes: tuple[int, ...]        # examples per key
    binary: np.ndarray            # 2PL item (else linear-Gaussian)
    mean: np.ndarray              # mu_i (Gaussian items)
    scale: np.ndarray             # s_i (Gaussian items)
    loadings: np.ndarray          # a_i
    offsets: np.ndarray           # b_i (2PL items)
    noise: float                  # sigma^2 of standardized Gaussian items

    @property
    def dims(self) -> int:
        return self.loadings.shape[1]

    def items(self, seen: Mapping[str, np.ndarray]) -> np.ndarray:
        """Flat item indices of the examples ``seen[key]`` (indices within each key)."""
        starts = np.cumsum((0,) + self.sizes[:-1])
        return np.concatenate([starts[k] + np.asarray(seen[key], dtype=np.int64)
                               for k, key in enumerate(self.keys) if key in seen])

    def ability(self, items: np.ndarray, y: np.ndarray, steps: int = 25) -> np.ndarray:
        """MAP ability from responses ``y`` of ``items``: prior N(0, I), Gaussian items
        ``z = (y - mu) / s`` with noise sigma^2, 2PL items Bernoulli."""
        a, binary = self.loadings[items], self.binary[items]
        g, b = ~binary, binary
        z = (y[g] - self.mean[items][g]) / self.scale[items][g]
        ag = a[g]
        # Gaussian part alone is quadratic: (A^T A / s2 + I) theta = A^T z / s2
        hess0 = ag.T @ ag / self.noise + np.eye(self.dims)
        theta = np.linalg.solve(hess0, ag.T @ z / self.noise)
        if not b.any():
            return theta
        ab, off, yb = a[b], self.offsets[items][b], y[b]
        for _ in range(steps):  # Newton on the convex negative log posterior
            p = _sigmoid(ab @ theta - off)
            grad = hess0 @ theta - ag.T @ z / self.noise - ab.T @ (yb - p)
            hess = hess0 + (ab * (p * (1 - p))[:, None]).T @ ab
            step = np.linalg.solve(hess, grad)
            theta = theta - step
            if np.max(np.abs(step)) < 1e-10:
                break
        return theta

    def predict(self, theta: np.ndarray) -> np.ndarray:
        """Expected response of every item, (n,)."""
        lin = self.loadings @ theta
        return np.where(self.binary, _sigmoid(lin - self.offsets),
                        self.mean + self.scale * lin)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


def fit_irt(stats: Sequence[Stats], keys: Sequence[str], dims: int = 2,
            ridge: float = 1.0) -> IrtModel:
    """Item parameters from the per-example scores of ``m`` candidates scored in full
    (module docstring). ``dims`` is capped at ``m - 1``."""
    y = np.stack([np.concatenate([_values(s, k) for k in keys]) for s in stats], axis=1)
    n, m = y.shape  # (items, candidates)
    sizes = tuple(len(stats[0][k][0]) for k in keys)
    binary = np.concatenate([np.full(size, bool(np.isin(_block(y, sizes, i), (0.0, 1.0)).all()))
                             for i, size in enumerate(sizes)])
    mean, sd = y.mean(axis=1), y.std(axis=1)
    scale = np.where(sd > 1e-12, sd, 1.0)
    z = (y - mean[:, None]) / scale[:, None]  # (n, m); constant items are rows of zeros
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    d = max(1, min(dims, m - 1, int((s > 1e-9 * max(s[0], 1e-300)).sum()) or 1))
    theta = math.sqrt(m) * vt[:d]                     # (d, m): unit variance per dimension
    loadings = u[:, :d] * s[:d] / math.sqrt(m)        # (n, d): z ~ loadings @ theta
    resid = z[~binary] - loadings[~binary] @ theta
    noise = max(float(np.mean(resid ** 2)) if resid.size else 1.0, 1e-3)
    offsets = np.zeros(n)
    if binary.any():
        loadings[binary], offsets[binary] = _logistic(y[binary], theta, ridge)
    return IrtModel(tuple(keys), sizes, binary, mean, scale, loadings, offsets, noise)


def _block(y: np.ndarray, sizes: tuple[int, ...], i: int) -> np.ndarray:
    start = sum(sizes[:i])
    return y[start:start + sizes[i]]


def _logistic(y: np.ndarray, theta: np.ndarray, ridge: float, steps: int = 30
              ) -> tuple[np.ndarray, np.ndarray]:
    """Per item, ridge logistic regression of its 0/1 responses on the abilities:
    P = sigmoid(a . theta - b); returns a (k, d) and b (k,). Newton, vectorized over items."""
    k, m = y.shape
    x = np.vstack([theta, -np.ones((1, m))]).T        # (m, d + 1): [theta, -1] . [a, b]
    w = np.zeros((k, x.shape[1]))
    eye = ridge * np.eye(x.shape[1])
    for _ in range(steps):
        p = _sigmoid(w @ x.T)                          # (k, m)
        grad = (p - y) @ x + w @ eye                   # (k, d + 1)
        hess = np.einsum("km,mi,mj->kij", p * (1 - p), x, x) + eye
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        w -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return w[:, :-1], w[:, -1]


class IrtEstimator:
    """p-IRT and gp-IRT estimates of the scores ``keys`` of a candidate scored on anchors.

    Args:
        stats: per warmup candidate scored in full, ``{key: [nums, dens]}``.
        keys: the scores to estimate (``task/metric``); their tasks' examples are the items.
        anchors: per key, (example indices, weights) of the examples a candidate is scored on;
            the weights give the anchor estimate (gp-IRT's other half).
        dims: ability dimensions.
        folds: cross-validation folds for gp-IRT's lambda.
    """

    def __init__(self, stats: Sequence[Stats], keys: Sequence[str],
                 anchors: Mapping[str, tuple[Sequence[int], Sequence[float]]],
                 dims: int = 2, folds: int = 5) -> None:
        self.keys, self.anchors, self.dims = list(keys), dict(anchors), dims
        self.dens = {k: np.asarray(stats[0][k][1], dtype=np.float64) for k in keys}
        self.model = fit_irt(stats, keys, dims)
        self.lam = self._cross_validate(stats, folds)

    def _estimates(self, model: IrtModel, seen: Mapping[str, tuple[np.ndarray, np.ndarray]]
                   ) -> dict[str, tuple[float, float]]:
        """Per key: (anchor estimate, p-IRT) from ``seen[key] = (nums, dens)`` of the
        anchors."""
        idx = {k: np.asarray(self.anchors[k][0], dtype=np.int64) for k in self.keys}
        items = model.items(idx)
        y = np.concatenate([s[0] / np.where(s[1] == 0, 1.0, s[1])
                            for s in (seen[k] for k in self.keys)])
        pred = model.predict(model.ability(items, y))
        out, start = {}, 0
        for k, size in zip(self.keys, model.sizes):
            num, den = seen[k]
            w = np.asarray(self.anchors[k][1], dtype=np.float64)
            anchor = float(w @ num / (w @ den)) if w @ den else 0.0
            unseen = np.ones(size, dtype=bool)
            unseen[idx[k]] = False
            dens = self.dens[k]
            total = num.sum() + dens[unseen] @ pred[start:start + size][unseen]
            out[k] = (anchor, float(total / dens.sum()) if dens.sum() else 0.0)
            start += size
        return out

    def _seen(self, stats: Stats) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {k: tuple(np.asarray(v, dtype=np.float64)[np.asarray(self.anchors[k][0])]
                         for v in stats[k]) for k in self.keys}

    def _cross_validate(self, stats: Sequence[Stats], folds: int) -> dict[str, float]:
        """gp-IRT's lambda per key: least squares of the full score on the two estimates,
        over warmup candidates each held out of the fit that estimates it."""
        m = len(stats)
        folds = max(2, min(folds, m))
        rows: dict[str, list[tuple[float, float, float]]] = {k: [] for k in self.keys}
        for f in range(folds):
            held = [j for j in range(m) if j % folds == f]
            rest = [stats[j] for j in range(m) if j % folds != f]
            if len(rest) < 2:
                continue
            model = fit_irt(rest, self.keys, self.dims)
            for j in held:
                est = self._estimates(model, self._seen(stats[j]))
                for k in self.keys:
                    num, den = (np.asarray(v, dtype=np.float64) for v in stats[j][k])
                    rows[k].append((*est[k], float(num.sum() / den.sum()) if den.sum() else 0.0))
        lam = {}
        for k, r in rows.items():
            a, p, s = (np.array(c) for c in zip(*r)) if r else (np.zeros(0),) * 3
            denom = float(((a - p) ** 2).sum())
            lam[k] = float(np.clip(((a - p) * (s - p)).sum() / denom, 0.0, 1.0)) if denom > 0 \
                else 0.5
        return lam

    def estimate(self, seen: Mapping[str, tuple[Sequence[float], Sequence[float]]]
                 ) -> dict[str, dict[str, float]]:
        """Per key, ``{"anchors", "pirt", "gpirt"}`` estimates from the anchors' per-example
        ``(nums, dens)`` (in the anchors' order)."""
        arrays = {k: tuple(np.asarray(v, dtype=np.float64) for v in seen[k]) for k in self.keys}
        out = {}
        for k, (anchor, pirt) in self._estimates(self.model, arrays).items():
            lam = self.lam[k]
            out[k] = {"anchors": anchor, "pirt": pirt, "gpirt": lam * anchor + (1 - lam) * pirt}
        return out
