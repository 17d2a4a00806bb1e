"""Cheaper fitness: which examples a candidate is scored on, and whether it goes on.

A :class:`Ladder` holds a search's rungs (``fidelity.rungs``: fractions of every evaluator's
examples). A candidate starts on rung 0; after each rung :meth:`Ladder.tell` says whether it
goes on: it does while it is in the best ``1/eta`` of the candidates scored at that rung
(asynchronous successive halving, decided at once so that no candidate waits; the first
``eta`` at a rung always go on). "Best" is data: the weighted loss for a single-objective
optimizer (CMA-ES), Pareto dominance otherwise (a candidate goes on while fewer than
``n/eta`` of the ``n`` candidates at its rung dominate it).

Which examples a rung scores (``estimator``):

* ``subset``  the first ``ceil(f n)`` examples of a seeded permutation per task, so rungs
  are nested; the rung's score is the plain score on them.
* ``anchors`` (tinyBenchmarks' anchor points, Polo et al. 2024, after Vivek et al. 2023):
  the first ``warmup`` candidates are scored in full, per example; each task's examples are
  clustered by their per-example scores across those candidates (k-means, ``k = ceil(f n)``);
  the example nearest each centre is an anchor, weighted by its cluster's size. Later
  candidates are scored on the anchors only and the weighted score estimates the full one.
* ``pirt`` / ``gpirt`` (tinyBenchmarks' IRT estimators, :mod:`evomerge.search.irt`): the same
  anchors; item parameters are fitted on the warmup candidates' per-example scores, and a
  candidate's anchor scores give its ability and so an estimate of every other example.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from evomerge.errors import ConfigError
from evomerge.search.objectives import weighted_loss
from evomerge.search.records import TrialRecord
from evomerge.search.space_blocks import Fidelity, Objective

__all__ = ["Ladder", "FULL", "fit_anchors", "kmeans", "ladder_for"]

FULL = -1                              # a full-fidelity evaluation outside the ladder (warmup)

Subsets = dict[str, dict[str, tuple[list[int], list[float] | None]]]


class Ladder:
    """Rungs, the examples each one scores, and the promotion rule (module docstring).

    Args:
        config: the space's ``fidelity``.
        sizes: evaluator -> task -> number of examples.
        objectives: the space's objectives (directions and weights are data).
        scalar: compare candidates by weighted loss (single-objective optimizers).
    """

    def __init__(self, config: Fidelity, sizes: dict[str, dict[str, int]],
                 objectives: Sequence[Objective], scalar: bool) -> None:
        self.config, self.sizes, self.objectives = config, sizes, list(objectives)
        self.scalar = scalar
        rng = np.random.default_rng(config.seed)
        self._perm = {(e, t): rng.permutation(sizes[e][t])
                      for e in sorted(sizes) for t in sorted(sizes[e])}
        self.anchors: dict[int, Subsets] | None = None
        self._irt: dict[tuple[int, str], Any] = {}  # (rung, evaluator) -> IrtEstimator
        self.history: dict[int, list[tuple[float, ...]]] = {}

    @property
    def last(self) -> int:
        return len(self.config.rungs) - 1

    def fraction(self, rung: int) -> float:
        return 1.0 if rung == FULL else self.config.rungs[rung]

    def first_rung(self, full_so_far: int) -> int:
        """Where a new candidate starts: in full while the warmup is not done."""
        if full_so_far < self.config.warmup or (self.anchored and self.anchors is None):
            return FULL
        return 0

    @property
    def anchored(self) -> bool:
        """Whether rungs below 1 score anchors (``anchors``, ``pirt``, ``gpirt``)."""
        return self.config.estimator != "subset"

    @property
    def irt(self) -> bool:
        """Whether a rung's anchor scores are turned into an IRT estimate."""
        return self.config.estimator in ("pirt", "gpirt")

    @property
    def incremental(self) -> bool:
        """Whether a rung scores only the examples its predecessor did not (``subset``: the
        rungs are nested, so a candidate's totals add up across its rungs)."""
        return self.config.estimator == "subset"

    def _count(self, rung: int, n: int) -> int:
        return 0 if rung < 0 else min(n, max(1, math.ceil(self.config.rungs[rung] * n)))

    def subsets(self, rung: int) -> Subsets | None:
        """Indices (and weights) per evaluator and task for ``rung``; None: everything.
        ``subset``: the examples added since the previous rung."""
        if rung == FULL or (self.fraction(rung) >= 1.0 and rung == 0):
            return None
        if self.anchored:
            if self.fraction(rung) >= 1.0:
                return None
            assert self.anchors is not None, "anchors are fitted before rung 0 is scored"
            return self.anchors[rung]
        return {e: {t: (self._perm[e, t][self._count(rung - 1, n):self._count(rung, n)]
                        .tolist(), None) for t, n in tasks.items()}
                for e, tasks in self.sizes.items()}

    def _key(self, values: Sequence[float]) -> tuple[float, ...]:
        if self.scalar:
            return (weighted_loss(values, self.objectives),)
        return tuple(v if o.direction == "minimize" else -v
                     for v, o in zip(values, self.objectives))

    def tell(self, rung: int, values: Sequence[float] | None) -> bool:
        """Record a result at ``rung``; True when the candidate goes on to the next rung."""
        if values is None:
            return False
        key = self._key(values)
        seen = self.history.setdefault(rung, [])
        seen.append(key)
        if rung in (FULL, self.last):
            return False
        if len(seen) <= self.config.eta:
            return True
        beaten = sum(_dominates(other, key) for other in seen)
        return beaten < len(seen) / self.config.eta

    def restore(self, trials: Sequence[Any]) -> None:
        """Rung history from the study's trials (in trial order)."""
        for t in sorted(map(TrialRecord, trials), key=lambda t: t.number):
            for r in t.rungs:
                if r.get("values") is not None:
                    self.history.setdefault(r["rung"], []).append(self._key(r["values"]))

    def load_anchors(self, stored: dict[str, Any]) -> None:
        """Anchors as :meth:`fit` stored them. They are read back from the study, i.e. data:
        a rung, evaluator or task this ladder lacks, or an index outside its task (a negative
        one would wrap around), is a ValueError, which refuses the resume."""
        rungs = {str(k) for k, f in enumerate(self.config.rungs) if f < 1.0}
        if not isinstance(stored, dict) or set(stored) != rungs:
            raise ValueError(f"anchors name rungs {sorted(stored)!r}, not {sorted(rungs)!r}")
        tasks_of = {(e, t) for e, tasks in self.sizes.items() for t in tasks}
        for r, evs in stored.items():  # every task: one left out would be scored in full
            named = {(e, t) for e, tasks in evs.items() for t in tasks}
            if named != tasks_of:
                odd = sorted(named ^ tasks_of)[0]
                raise ValueError(f"anchors of rung {r} {'lack' if odd in tasks_of else 'name'} "
                                 f"task {odd[0]}/{odd[1]}")
        self.anchors = {int(r): {e: {t: self._anchor(e, t, v) for t, v in tasks.items()}
                                 for e, tasks in evs.items()} for r, evs in stored.items()}

    def _anchor(self, evaluator: str, task: str, value: Any) -> tuple[list[int], list[float]]:
        n = self.sizes[evaluator][task]
        idx, w = value
        # fit_anchors' weights are cluster sizes: positive, summing to the task's size
        if (not idx or len(idx) != len(w) or not all(type(i) is int and 0 <= i < n for i in idx)
                or not all(type(x) in (int, float) and 0 < x <= n for x in w)
                or sum(w) > n * (1 + 1e-9)):
            raise ValueError(f"anchors of {evaluator}/{task} are not indices below {n} with "
                             f"positive weights summing to at most {n}")
        return list(idx), [float(x) for x in w]

    def fit(self, stats: Sequence[dict[str, dict[str, list]]]) -> dict[str, Any]:
        """Choose the anchors from the warmup candidates' per-example ``stats``; returns them
        as JSON for the study."""
        fractions = {k: f for k, f in enumerate(self.config.rungs) if f < 1.0}
        stored = {str(k): {} for k in fractions}
        for e, tasks in self.sizes.items():
            for t in tasks:
                chosen = fit_anchors([s[e] for s in stats], t, fractions, self._metrics(e, t),
                                     self.config.seed)
                for k, (idx, w) in chosen.items():
                    stored[str(k)].setdefault(e, {})[t] = [idx, w]
        self.load_anchors(stored)
        if self.irt:
            self.fit_irt(stats)
        return stored

    def fit_irt(self, stats: Sequence[dict[str, dict[str, list]]]) -> None:
        """IRT item parameters per evaluator and rung from the warmup candidates' per-example
        ``stats`` (after the anchors are chosen or loaded)."""
        from evomerge.search.irt import IrtEstimator

        self._irt = {}
        for rung, evs in (self.anchors or {}).items():
            for e, tasks in evs.items():
                keys = [o.key for o in self.objectives if o.evaluator == e]
                anchors = {o.key: tasks[o.task] for o in self.objectives if o.evaluator == e}
                self._irt[rung, e] = IrtEstimator([s[e] for s in stats], keys, anchors)

    def estimate(self, rung: int, stats: dict[str, dict[str, list]]) -> dict[str, float]:
        """The ``pirt`` / ``gpirt`` scores of a candidate from its anchors' per-example
        ``stats`` at ``rung`` (evaluator -> key -> [nums, dens], in anchor order)."""
        out = {}
        for (r, e), est in self._irt.items():
            if r == rung:
                got = est.estimate({k: stats[e][k] for k in est.keys})
                out.update({k: v[self.config.estimator] for k, v in got.items()})
        return out

    def _metrics(self, evaluator: str, task: str) -> list[str]:
        """The metrics whose per-example scores cluster a task's examples: its objectives'."""
        return [o.key for o in self.objectives if o.evaluator == evaluator and o.task == task]


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def fit_anchors(stats: Sequence[dict[str, list]], task: str, fractions: dict[int, float],
                metrics: Sequence[str], seed: int) -> dict[int, tuple[list[int], list[float]]]:
    """Anchors of one task per rung: (example indices, weights summing to the task's size).

    ``stats``: per warmup candidate, ``{task/metric: [nums, dens]}``. Each example is a
    point whose coordinates are its per-example score (num/den) under every candidate and
    metric, each coordinate standardized across examples.
    """
    names = list(metrics) or sorted(k for k in stats[0] if k.startswith(f"{task}/"))
    cols = []
    for s in stats:
        for name in names:
            num, den = (np.asarray(v, dtype=np.float64) for v in s[name])
            cols.append(num / np.where(den == 0, 1.0, den))
    x = np.stack(cols, axis=1)  # (examples, candidates x metrics)
    sd = x.std(axis=0)
    x = (x[:, sd > 0] - x.mean(axis=0)[sd > 0]) / sd[sd > 0]
    n = x.shape[0]
    out = {}
    for rung, f in fractions.items():
        k = min(n, max(1, math.ceil(f * n)))
        labels, centres = kmeans(x, k, seed)
        idx, w = [], []
        for c in range(k):
            members = np.flatnonzero(labels == c)
            if len(members):
                d = ((x[members] - centres[c]) ** 2).sum(1)
                idx.append(int(members[np.argmin(d)]))
                w.append(float(len(members)))
        out[rung] = (idx, w)
    return out


def kmeans(x: np.ndarray, k: int, seed: int, iters: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding: (labels (n,), centres (k, d))."""
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    if x.shape[1] == 0:  # every example scored alike: any k of them stand for all
        labels = np.arange(n) % k
        return labels, np.zeros((k, 0))
    centres = [x[rng.integers(n)]]
    for _ in range(1, k):
        d = np.min(((x[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
        p = d / d.sum() if d.sum() > 0 else np.full(n, 1.0 / n)
        centres.append(x[rng.choice(n, p=p)])
    c = np.asarray(centres)
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iters):
        labels_new = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
        if _ > 0 and np.array_equal(labels_new, labels):
            break
        labels = labels_new
        for j in range(k):
            members = x[labels == j]
            if len(members):
                c[j] = members.mean(0)
    return labels, c


def ladder_for(space: Any, evaluators: dict[str, Any], scalar: bool) -> Ladder | None:
    """The space's ladder, or None without ``fidelity``.

    Raises:
        ConfigError: an evaluator cannot score a subset of its examples.
    """
    from evomerge.evaluators.base import SubsetEvaluator

    if space.fidelity is None:
        return None
    for name, ev in evaluators.items():
        if not isinstance(ev, SubsetEvaluator):
            raise ConfigError(f"fidelity: evaluator {name!r} ({space.evaluators[name].type}) "
                              "cannot score a subset of its examples; fidelity works with "
                              "the 'answers' and 'zoo' evaluators.")
    return Ladder(space.fidelity, {n: ev.sizes() for n, ev in evaluators.items()},
                  space.objectives, scalar)
