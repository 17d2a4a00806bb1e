"""Data-flow paths as segments, and the operators a structured path search uses on them.

A path is a sequence of :class:`Segment` (model, layer range, scale): the layers
``start..stop-1`` of one model in order, entered with the hidden state multiplied by
``scale``; inside a segment nothing is scaled. This respects the coupling that CMA-ES over
thresholded per-slot flags ignores (arXiv:2605.12326): a scale exists only where the path
changes source, so the continuous genes searched are those of transitions the path uses.

:class:`PathCodec` maps a path to the genes of a ``dfs`` space's
:class:`~evomerge.search.dfs.PathGenome` and back, so a study, its export and the dashboard
see ordinary DFS trials:

* flags: segments are laid on the slot order (repetition r, model, layer) greedily; a path
  that the ``repeats`` cannot hold, or longer than ``max_length``, has no encoding;
* ``scaling: slot``: a segment's scale is its first slot's; ``scaling: pair``: the scale of a
  transition a -> b is ``W[a, b]``, so every a -> b transition of a path shares one scale, and
  ``W[a, a]`` (inside a segment) stays 1; ``scaling: none``: every scale is 1.

Operators (:func:`mutate`, :func:`crossover`) draw from a ``numpy.random.Generator``:
re-source a (part of a) segment from another model, shift a boundary, insert a new segment,
delete one (or part of one), duplicate a part in place (layer repetition), perturb one
transition's scale; crossover joins one parent's head to the other's tail at the same depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

import numpy as np

from evomerge.errors import ConfigError

__all__ = ["Segment", "PathCodec", "mutate", "crossover", "describe", "OPERATORS", "Operator"]


@dataclass(frozen=True)
class Segment:
    """Layers ``start..stop-1`` of model ``alias``, entered with the hidden state times
    ``scale``."""

    alias: str
    start: int
    stop: int
    scale: float = 1.0

    def __len__(self) -> int:
        return self.stop - self.start


Path = tuple[Segment, ...]
Operator = Literal["resource", "shift", "insert", "delete", "duplicate", "scale"]
OPERATORS: tuple[str, ...] = get_args(Operator)


def describe(path: Sequence[Segment]) -> str:
    """``add[0:12] > final[12:30]x1.25``: a path in one line."""
    return " > ".join(f"{s.alias}[{s.start}:{s.stop}]" + (f"x{s.scale:.3g}" if s.scale != 1.0
                                                          else "") for s in path)


def _steps(path: Sequence[Segment]) -> list[tuple[str, int, float]]:
    return [(s.alias, i, s.scale if i == s.start else 1.0) for s in path
            for i in range(s.start, s.stop)]


def _segments(steps: Sequence[tuple[str, int, float]]) -> Path:
    """Consecutive layers of one model entered unscaled join one segment."""
    out: list[Segment] = []
    for alias, layer, scale in steps:
        last = out[-1] if out else None
        if last and last.alias == alias and last.stop == layer and scale == 1.0:
            out[-1] = replace(last, stop=layer + 1)
        else:
            out.append(Segment(alias, layer, layer + 1, scale))
    return tuple(out)


class PathCodec:
    """Paths <-> the named genes of a :class:`~evomerge.search.dfs.PathGenome` (module
    docstring)."""

    def __init__(self, genome: Any) -> None:
        self.genome, self.dfs = genome, genome.space.dfs
        self.aliases = list(genome.space.models)
        self.alias_of = {ref: a for a, ref in genome.space.models.items()}
        self.num_layers = genome.num_layers
        self.blocks = [(r, a) for r in range(self.dfs.repeats) for a in self.aliases]
        self.low, self.high = self.dfs.scale

    def require_own_paths(self) -> PathCodec:
        """This codec, once the models' own paths fit its slots: the path searches start from
        them (and splice them); ConfigError otherwise, before any study exists."""
        if self.dfs.max_length is not None and self.dfs.max_length < self.num_layers:
            raise ConfigError(f"dfs.max_length {self.dfs.max_length} is shorter than a model's "
                              f"own path ({self.num_layers} layers), where path searches start: "
                              f"give at least {self.num_layers}, or search it with cma.")
        return self

    def own(self, alias: str) -> Path:
        """A model's own path: its layers once, in order."""
        return (Segment(alias, 0, self.num_layers),)

    def canonical(self, path: Sequence[Segment]) -> Path | None:
        """``path`` as the genes can hold it (scales clipped, shared or dropped as the
        scaling says; segments merged), or None when the slots cannot hold it."""
        steps: list[tuple[str, int, float]] = []
        shared: dict[tuple[str, str], float] = {}
        for k, (alias, layer, scale) in enumerate(_steps(path)):
            if k == 0 or self.dfs.scaling == "none":
                scale = 1.0
            else:
                prev, prev_layer = steps[-1][0], steps[-1][1]
                if prev == alias and (layer == prev_layer + 1 or self.dfs.scaling == "pair"):
                    scale = 1.0 if self.dfs.scaling == "pair" else scale  # W[a, a] stays 1
                if scale != 1.0 or prev != alias:
                    scale = float(np.clip(scale, self.low, self.high))
                if self.dfs.scaling == "pair" and prev != alias:
                    scale = shared.setdefault((prev, alias), scale)
            steps.append((alias, layer, scale))
        out = _segments(steps)
        return out if out and self._slots(out) is not None else None

    def _slots(self, path: Path) -> list[tuple[int, str, int]] | None:
        """Slots (repetition, alias, layer) of ``path``, laid greedily in slot order."""
        if self.dfs.max_length is not None and sum(map(len, path)) > self.dfs.max_length:
            return None
        block, last, out = 0, -1, []
        for alias, layer, _ in _steps(path):
            while block < len(self.blocks) and (self.blocks[block][1] != alias or layer <= last):
                block, last = block + 1, -1
            if block == len(self.blocks):
                return None
            out.append((self.blocks[block][0], alias, layer))
            last = layer
        return out

    def encode(self, path: Path) -> dict[str, Any]:
        """Gene values of a canonical path."""
        slots = self._slots(path)
        assert slots is not None, "encode a canonical path"
        params: dict[str, Any] = {g.name: (False if g.flag else 1.0) for g in self.genome.genes}
        for (r, a, i), (_, _, scale) in zip(slots, _steps(path)):
            params[f"on.r{r}.{a}.l{i}"] = True
            if self.dfs.scaling == "slot":
                params[f"scale.r{r}.{a}.l{i}"] = scale
        if self.dfs.scaling == "pair":
            for prev, seg in zip(path, path[1:]):
                if prev.alias != seg.alias:
                    params[f"scale.{prev.alias}.{seg.alias}"] = seg.scale
        return params

    def decode(self, params: dict[str, Any]) -> Path:
        """The path of gene values (as the genome builds it)."""
        return _segments([(self.alias_of[s.model], s.layer, s.scale)
                          for s in self.genome.path(params)])


def _part(rng: np.random.Generator, seg: Segment, whole: float = 0.5,
          reach: int | None = None) -> tuple[int, int]:
    """A sub-range of ``seg``: the whole of it with probability ``whole`` (when it has at
    most ``reach`` layers), else at most ``reach`` layers of it."""
    if len(seg) == 1 or (rng.random() < whole and (reach is None or len(seg) <= reach)):
        return seg.start, seg.stop
    a = int(rng.integers(seg.start, seg.stop))
    b = int(rng.integers(a + 1, min(seg.stop, a + (reach or len(seg))) + 1))
    return a, b


def _cut(seg: Segment, a: int, b: int) -> list[Segment]:
    """``seg`` without layers a..b-1: what is left before and after."""
    out = []
    if a > seg.start:
        out.append(replace(seg, stop=a))
    if b < seg.stop:
        out.append(Segment(seg.alias, b, seg.stop))
    return out


def _insert_near(path: Path, rng: np.random.Generator, aliases: Sequence[str], num_layers: int,
                 max_shift: int, reach: int) -> Path:
    """A local insert: before a random step k of ``path`` (any layer, not only a segment's
    ends), a segment of at most ``min(reach, max_shift + 1)`` layers of a random model that
    starts near the depth there. With ``d`` the layer that would come next (the previous
    step's layer + 1; 0 at the front), the start is drawn from ``d - max_shift .. d +
    max_shift - 1``, so every inserted layer lies within ``d - max_shift .. d + max_shift +
    reach - 2``: a far jump (layer 21 put before layer 0, measured to break a 30-layer model)
    is never drawn."""
    steps = _steps(path)
    k = int(rng.integers(len(steps) + 1))
    d = steps[k - 1][1] + 1 if k else 0
    start = int(np.clip(rng.integers(d - max_shift, d + max_shift), 0, num_layers - 1))
    stop = min(num_layers, start + int(rng.integers(1, min(max_shift + 1, reach) + 1)))
    new = [(str(rng.choice(aliases)), i, 1.0) for i in range(start, stop)]
    return _segments(steps[:k] + new + steps[k:])


def mutate(path: Path, rng: np.random.Generator, aliases: Sequence[str], num_layers: int,
           op: str, scale_sigma: float = 0.15, max_shift: int = 3,
           reach: int | None = None) -> Path:
    """``path`` changed by operator ``op`` (one of :data:`OPERATORS`); may return a path the
    codec cannot hold (the caller draws again). ``reach`` bounds the layers one re-source,
    delete, duplicate or insert touches (None: up to a whole segment; a local search near a
    good start, e.g. PS+DFS, uses 1 or 2); with a reach, an insert goes before any step and
    starts near the depth there (:func:`_insert_near`)."""
    segs = list(path)
    i = int(rng.integers(len(segs)))
    seg = segs[i]
    if op == "resource":
        a, b = _part(rng, seg, reach=reach)
        other = [x for x in aliases if x != seg.alias]
        if not other:
            return path
        new = Segment(str(rng.choice(other)), a, b)
        rest = _cut(seg, a, b)
        before = [s for s in rest if s.stop <= a]
        after = [s for s in rest if s.start >= b]
        segs[i:i + 1] = before + [new] + after
    elif op == "shift":
        d = int(rng.integers(1, max_shift + 1)) * (1 if rng.random() < 0.5 else -1)
        if i + 1 < len(segs) and segs[i + 1].start == seg.stop:  # move the boundary
            nxt = segs[i + 1]
            b = int(np.clip(seg.stop + d, seg.start + 1, nxt.stop - 1))
            segs[i], segs[i + 1] = replace(seg, stop=b), replace(nxt, start=b)
        else:  # grow or shrink the segment at its end
            segs[i] = replace(seg, stop=int(np.clip(seg.stop + d, seg.start + 1, num_layers)))
    elif op == "insert":
        if reach is not None:  # local: before any layer, near the depth there
            return _insert_near(path, rng, aliases, num_layers, max_shift, reach)
        start = int(rng.integers(num_layers))
        stop = min(num_layers, start + int(rng.integers(1, max_shift + 2)))
        segs.insert(int(rng.integers(len(segs) + 1)), Segment(str(rng.choice(aliases)), start, stop))
    elif op == "delete":
        a, b = _part(rng, seg, reach=reach)
        rest = _cut(seg, a, b)
        if len(segs) == 1 and not rest:
            return path
        segs[i:i + 1] = rest
    elif op == "duplicate":
        a, b = _part(rng, seg, whole=0.2, reach=reach)
        b = min(b, a + max_shift + 1)
        after = [Segment(seg.alias, b, seg.stop)] if b < seg.stop else []
        segs[i:i + 1] = [replace(seg, stop=b), Segment(seg.alias, a, b), *after]
    elif op == "scale":
        moves = [k for k in range(1, len(segs))]
        if not moves:
            return path
        k = int(rng.choice(moves))
        segs[k] = replace(segs[k], scale=float(segs[k].scale * np.exp(rng.normal(0, scale_sigma))))
    else:
        raise ValueError(f"unknown path operator {op!r}; known: {', '.join(OPERATORS)}")
    return tuple(segs)


def crossover(a: Path, b: Path, rng: np.random.Generator) -> Path:
    """``a``'s head joined to ``b``'s tail at the same depth: cut ``a`` before a random step
    i, and continue with ``b`` from its first step of a layer at least as deep as ``a``'s
    step i (the join keeps ``b``'s scale there)."""
    sa, sb = _steps(a), _steps(b)
    if len(sa) < 2:
        return a
    i = int(rng.integers(1, len(sa)))
    depth = sa[i][1]
    j = next((k for k, s in enumerate(sb) if s[1] >= depth), len(sb))
    return _segments(sa[:i] + sb[j:])


def splice(a: Path, b: Path, rng: np.random.Generator) -> Path:
    """``a`` with one run of ``b``'s layers put in at their own depth: two cuts i < k of
    ``a``'s steps, and between them ``b``'s steps whose layers lie in ``a``'s depths
    [layer(i), layer(k)) (a two-point crossover; the splice keeps ``b``'s scales there)."""
    sa, sb = _steps(a), _steps(b)
    if len(sa) < 3:
        return crossover(a, b, rng)
    i, k = sorted(int(x) for x in rng.choice(np.arange(1, len(sa)), size=2, replace=False))
    lo, hi = sa[i][1], sa[k][1]
    run = [s for s in sb if lo <= s[1] < hi]
    # an ``a`` that goes back in depth between the cuts (repeated layers) has no such run
    return _segments(sa[:i] + run + sa[k:]) if run else crossover(a, b, rng)
