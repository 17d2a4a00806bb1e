"""A structured data-flow search: a genetic algorithm over paths made of segments.

    optimizer: {name: path_ga, popsize: 8, parents: 4, crossover: 0.3, seed: 0}

Sakana's DFS (arXiv:2403.13187, sec. 3.2) searches a flag per slot and a scale matrix with
CMA-ES, which treats a 0/1 flag as a coordinate thresholded at 0.5 and searches every scale,
whether or not the path uses it. arXiv:2605.12326 shows that an encoding respecting the
coupling between the binary path and the continuous scales wins. Here a path is a sequence
of (model, layer range, scale) segments (:mod:`evomerge.search.path_ops`):

* generation 0: the own path of each start model (``starts``, default ``dfs.start`` or every
  model; name a PS merge as a model and start from it for PS+DFS), and mutants of them, so
  the search begins at working models, not at a random 120-bit path (``init_mutations``
  mutations each, to spread it: with ``reach`` and length-keeping ``operators``, many small
  re-sourcings interleave the models' layers at their own depth, as a layer swap does),
  or, for a share ``init_splices`` of them, splices of two starts: one start's path with a
  run of another's layers at their own depth (``final[0:12] > add[12:25] > final[25:30]``);
* each later generation: children of the ``parents`` best paths so far (elitist, by the
  weighted loss CMA-ES also minimizes; with fidelity rungs, a pruned candidate ranks below
  every complete one): a depth-aligned crossover of two parents (``crossover`` of the
  children) or a parent, then one mutation (a second with probability 0.3): re-source, shift,
  insert, delete, duplicate, or a transition's scale (``operators`` narrows the choice;
  ``reach`` bounds the layers one mutation touches, for a local search near a good start);
* paths already proposed are drawn again (the study never scores one recipe twice).

Every generation is drawn from a generator seeded by (seed, generation) from the paths
scored before it, so :meth:`PathGaOptimizer.restore` rebuilds the state from the study's
trials alone, and a resumed search proposes what an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from evomerge.errors import ConfigError
from evomerge.search.gene import genome_hash
from evomerge.search.objectives import weighted_loss
from evomerge.search.optimizer_base import FixedSampler, Optimizer, Proposal
from evomerge.search.optimizer_config import PathGaConfig
from evomerge.search.path_ops import OPERATORS, PathCodec, crossover, describe, mutate, splice
from evomerge.search.records import T, told_values
from evomerge.search.space_blocks import Objective

__all__ = ["PathGaOptimizer"]

GEN, INDEX = T.CMA_GEN, T.CMA_INDEX  # generation and index, named as CMA-ES's
TRIES = 200  # draws for one new child before a repeat is accepted


class PathGaOptimizer(Optimizer):
    """Genetic algorithm over segment paths of a ``dfs`` space (module docstring)."""

    proposes = True

    def __init__(self, genome: Any, objectives: Sequence[Objective], config: PathGaConfig) -> None:
        if getattr(genome, "dfs", None) is None:
            raise ConfigError("optimizer 'path_ga' searches data-flow paths: the space needs a "
                              "'dfs' block.")
        self.codec = PathCodec(genome).require_own_paths()
        self.objectives, self.config = list(objectives), config
        aliases = self.codec.aliases
        starts = config.starts or ([genome.dfs.start] if genome.dfs.start else aliases)
        bad = [s for s in starts if s not in aliases]
        if bad:
            raise ConfigError(f"optimizer.starts {bad[0]!r} is not a model alias "
                              f"({', '.join(aliases)}).")
        self.starts = [self.codec.canonical(self.codec.own(a)) for a in starts]
        if config.init_splices and len(set(self.starts)) < 2:
            raise ConfigError(f"optimizer.init_splices {config.init_splices:g} splices two "
                              f"starts: name two different models or more in optimizer.starts.")
        self.ops = [op for op in (config.operators or OPERATORS)
                    if op != "scale" or self.codec.dfs.scaling != "none"]
        if not self.ops:
            raise ConfigError("optimizer.operators ['scale'] has nothing to change where "
                              "dfs.scaling is 'none'.")
        self.sampler = FixedSampler()  # the study samples what ask() proposed
        self.pool: list[tuple[tuple[float, float], int, Any]] = []  # (rank key, order, path)
        self.seen: set[str] = set()
        self._gen = 0
        self._start_generation()

    @property
    def popsize(self) -> int:
        return self.config.popsize

    def _start_generation(self) -> None:
        rng = np.random.default_rng([self.config.seed, self._gen])
        self._paths = self._breed(rng) if self.pool else self._first(rng)
        self._queue = list(range(len(self._paths)))
        self._told: dict[int, tuple[tuple[float, float], Any] | None] = {}

    def _new(self, paths: list, draw: Any) -> None:
        """Append ``draw()``'s first path the codec holds and nobody proposed yet (after
        :data:`TRIES` draws, a repeat)."""
        last = None
        for _ in range(TRIES):
            child = self.codec.canonical(draw())
            if child is None:
                continue
            last = child
            h = genome_hash(self.codec.encode(child))
            if h not in self.seen:
                self.seen.add(h)
                paths.append(child)
                return
        paths.append(last or self.starts[0])

    def _mutant(self, path: Any, rng: np.random.Generator, times: int | None = None) -> Any:
        """``path`` after one mutation (a second with probability 0.3), or after ``times``."""
        for _ in range(times or 1 + (rng.random() < 0.3)):
            path = mutate(path, rng, self.codec.aliases, self.codec.num_layers,
                          str(rng.choice(self.ops)), self.config.scale_sigma,
                          self.config.max_shift, self.config.reach)
        return path

    def _first(self, rng: np.random.Generator) -> list:
        paths: list = []
        for p in self.starts[:self.popsize]:
            self._new(paths, lambda p=p: p)
        times = self.config.init_mutations  # None: as in later generations
        share = self.config.init_splices

        def draw() -> Any:
            # no draw for the share when it is 0, so older studies replay as they were drawn
            if share and rng.random() < share:
                i, j = rng.choice(len(self.starts), size=2, replace=False)
                return splice(self.starts[i], self.starts[j], rng)
            return self._mutant(self.starts[rng.integers(len(self.starts))], rng, times)

        while len(paths) < self.popsize:
            self._new(paths, draw)
        return paths

    def _breed(self, rng: np.random.Generator) -> list:
        parents = [p for _, _, p in sorted(self.pool, key=lambda e: (e[0], e[1]))]
        parents = parents[:self.config.parents]
        paths: list = []

        def child() -> Any:
            if len(parents) > 1 and rng.random() < self.config.crossover:
                i, j = rng.choice(len(parents), size=2, replace=False)
                kid = crossover(parents[i], parents[j], rng)
                return self._mutant(kid, rng) if rng.random() < 0.5 else kid
            return self._mutant(parents[rng.integers(len(parents))], rng)

        while len(paths) < self.popsize:
            self._new(paths, child)
        return paths

    def ask(self) -> Proposal | None:
        if not self._queue:
            return None
        i = self._queue.pop(0)
        path = self._paths[i]
        return Proposal(self.codec.encode(path),
                        {GEN: self._gen, INDEX: i, T.PATH: describe(path)})

    def tell(self, attrs: dict[str, Any], values: Sequence[float] | None) -> None:
        if attrs.get(GEN) != self._gen:
            return  # a straggler of an older generation
        i = attrs[INDEX]
        if values is None:
            self._told[i] = None
        else:
            rung = attrs.get(T.FIDELITY_RUNG)
            # complete candidates first, then pruned ones by the rung they reached
            self._told[i] = ((0.0 if rung is None else 1.0 / (1 + rung),
                              weighted_loss(values, self.objectives)), self._paths[i])
        if len(self._told) == len(self._paths):
            for k in range(len(self._paths)):
                if self._told[k] is not None and math.isfinite(self._told[k][0][1]):
                    self.pool.append((self._told[k][0], len(self.pool), self._told[k][1]))
            self._gen += 1
            self._start_generation()

    def restore(self, trials: Sequence[Any], checkpoint: dict[str, Any] | None = None) -> None:
        """Replay the stored trials generation by generation; a trial whose path differs from
        the one replayed (another version drew it) is told as stored."""
        by_gen: dict[int, dict[int, Any]] = {}
        for t in trials:
            if GEN in t.user_attrs and T.PATH in t.user_attrs:
                by_gen.setdefault(t.user_attrs[GEN], {})[t.user_attrs[INDEX]] = t
        self.pool, self.seen, self._gen = [], set(), 0
        self._start_generation()
        while self._gen in by_gen:
            done, gen = by_gen[self._gen], self._gen
            for i, t in done.items():
                if i < len(self._paths) and t.params:
                    self._paths[i] = self.codec.decode(t.params)
            self._queue = [i for i in range(len(self._paths)) if i not in done]
            for t in done.values():
                self.tell(t.user_attrs, told_values(t))
            if self._gen == gen:
                return
