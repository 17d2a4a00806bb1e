"""Quality-diversity search: MAP-Elites over behaviour descriptors taken from the objectives.

    optimizer: {name: map_elites, descriptors: [add/answer_nll, final/answer_nll], bins: 8}

CycleQD and M2N2 (Sakana's later merging work) keep populations of diverse experts and merge
them with each other. Here the archive (:mod:`evomerge.search.archive`, a pyribs
``GridArchive``) keeps the best candidate (lowest weighted loss) of each cell of a grid over
the descriptors, e.g. the per-skill scores; each generation's ``popsize`` children are merges
of archive members:

* parameter spaces: pyribs' ``IsoLineEmitter`` in the genome's unit cube, a child is
  ``x_i + iso_sigma N(0, I) + line_sigma N(0, 1) (x_j - x_i)`` for elites i, j (Vassiliades &
  Mouret 2018): the line term interpolates and extrapolates between two merges; generation 0
  is the genome's start point (the uniform soup) and its neighbours;
* data-flow spaces: the path crossover of two elites and path mutations
  (:mod:`evomerge.search.path_ops`); generation 0 is the start models' own paths and mutants.

After each generation the archive is stored in the study (the optimizer checkpoint); a resumed
search replays the stored trials (pyribs and the path operators are seeded), so the archive
and the next proposals are those of an uninterrupted search.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from evomerge.errors import ConfigError
from evomerge.search.archive import grid_of
from evomerge.search.gene import genome_hash
from evomerge.search.objectives import weighted_loss
from evomerge.search.optimizer_base import FixedSampler, Optimizer, Proposal
from evomerge.search.optimizer_config import MapElitesConfig
from evomerge.search.path_ops import OPERATORS, PathCodec, crossover, describe, mutate
from evomerge.search.records import T, told_values
from evomerge.search.space_blocks import Objective

__all__ = ["MapElitesOptimizer"]

GEN, INDEX = T.CMA_GEN, T.CMA_INDEX  # generation and index, named as CMA-ES's
TRIES = 200


class MapElitesOptimizer(Optimizer):
    """MAP-Elites with pyribs (module docstring)."""

    proposes = True

    def __init__(self, genome: Any, objectives: Sequence[Objective],
                 config: MapElitesConfig) -> None:
        self.genome, self.objectives, self.config = genome, list(objectives), config
        self.grid = grid_of(genome.space)
        self.codec = (PathCodec(genome).require_own_paths()
                      if getattr(genome, "dfs", None) is not None else None)
        self.sampler = FixedSampler()  # the study samples what ask() proposed
        self._reset()

    @property
    def popsize(self) -> int:
        return self.config.popsize

    def _reset(self) -> None:
        try:
            from ribs.archives import GridArchive
            from ribs.emitters import IsoLineEmitter
        except ImportError:
            raise ConfigError("optimizer 'map_elites' needs pyribs: pip install "
                              "'evomerge[qd]'.") from None

        g = self.grid
        self.archive = GridArchive(solution_dim=self.genome.dim, dims=[g.bins] * len(g.keys),
                                   ranges=list(g.ranges), seed=self.config.seed,
                                   extra_fields={"gen": ((), np.int64), "member": ((), np.int64)})
        self.emitter = None if self.codec else IsoLineEmitter(
            self.archive, iso_sigma=self.config.iso_sigma, line_sigma=self.config.line_sigma,
            x0=self.genome.start_point(), bounds=[(0.0, 1.0)] * self.genome.dim,
            batch_size=self.popsize, seed=self.config.seed)
        self.seen: set[str] = set()
        self._gen, self._checkpoint = 0, None
        self._start_generation()

    def _start_generation(self) -> None:
        if self.emitter is not None:
            self._X = [np.clip(x, 0.0, 1.0) for x in self.emitter.ask()]
        else:
            self._X = self._paths(np.random.default_rng([self.config.seed, self._gen]))
        self._queue = list(range(len(self._X)))
        self._told: dict[int, float | None] = {}

    def _paths(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Unit-cube points of the generation's paths: start models' own paths and mutants
        first, then crossovers and mutants of archive elites."""
        codec = self.codec
        starts = [codec.own(a) for a in ([self.genome.dfs.start] if self.genome.dfs.start
                                         else codec.aliases)]
        ops = [op for op in OPERATORS if op != "scale" or codec.dfs.scaling != "none"]
        elites = [] if self.archive.empty else [
            codec.decode(self.genome.from_unit(x)) for x in self.archive.data("solution")]

        def child() -> Any:
            if not elites:
                parent = starts[rng.integers(len(starts))]
            elif len(elites) > 1 and rng.random() < 0.5:
                i, j = rng.choice(len(elites), size=2, replace=False)
                parent = crossover(elites[i], elites[j], rng)
            else:
                parent = elites[rng.integers(len(elites))]
            return mutate(parent, rng, codec.aliases, codec.num_layers, str(rng.choice(ops)))

        out: list[np.ndarray] = []
        for k in range(self.popsize):
            draws = (lambda k=k: starts[k]) if not elites and k < len(starts) else child
            last = None
            for _ in range(TRIES):
                path = codec.canonical(draws())
                if path is None:
                    continue
                last = codec.encode(path)
                if genome_hash(last) not in self.seen:
                    break
            last = last or codec.encode(codec.canonical(starts[0]))
            self.seen.add(genome_hash(last))
            out.append(self.genome.to_unit(last))
        return out

    def ask(self) -> Proposal | None:
        if not self._queue:
            return None
        i = self._queue.pop(0)
        params = self.genome.from_unit(self._X[i])
        attrs = {GEN: self._gen, INDEX: i, T.X: [float(v) for v in self._X[i]]}
        if self.codec is not None:
            attrs[T.PATH] = describe(self.codec.decode(params))
        return Proposal(params, attrs)

    def tell(self, attrs: dict[str, Any], values: Sequence[float] | None) -> None:
        if attrs.get(GEN) != self._gen:
            return
        i = attrs[INDEX]
        pruned = attrs.get(T.FIDELITY_RUNG) is not None  # an estimate: kept out of the archive
        self._told[i] = None if values is None or pruned else tuple(values)
        if len(self._told) == len(self._X):
            self._finish_generation()

    def _finish_generation(self) -> None:
        ok = [i for i in range(len(self._X)) if self._told[i] is not None]
        losses = [weighted_loss(self._told[i], self.objectives) for i in ok]
        ok = [i for i, loss in zip(ok, losses) if math.isfinite(loss)]
        if ok:
            self.archive.add(np.stack([self._X[i] for i in ok]),
                             -np.array([weighted_loss(self._told[i], self.objectives) for i in ok]),
                             np.array([self.grid.measures(self._told[i]) for i in ok]),
                             gen=np.full(len(ok), self._gen), member=np.array(ok))
        self._gen += 1
        self._checkpoint = {"generation": self._gen, "cells": self.cells()}
        self._start_generation()

    def cells(self) -> list[dict[str, Any]]:
        """The archive: per filled cell, its coordinates, the elite's (generation, index)
        and loss, and its descriptor values."""
        if self.archive.empty:
            return []
        d = self.archive.data(["index", "objective", "measures", "gen", "member"])
        coords = self.archive.int_to_grid_index(d["index"])
        rows = [{"cell": [int(c) for c in coords[k]], "gen": int(d["gen"][k]),
                 "index": int(d["member"][k]),
                 "loss": -float(d["objective"][k]),
                 "measures": [float(m) for m in d["measures"][k]]} for k in range(len(coords))]
        return sorted(rows, key=lambda r: r["cell"])

    def checkpoint(self) -> dict[str, Any] | None:
        return self._checkpoint

    def restore(self, trials: Sequence[Any], checkpoint: dict[str, Any] | None = None) -> None:
        """Replay the stored trials generation by generation (a stored point that differs from
        the replayed one is told as stored)."""
        by_gen: dict[int, dict[int, Any]] = {}
        for t in trials:
            if GEN in t.user_attrs and T.X in t.user_attrs:
                by_gen.setdefault(t.user_attrs[GEN], {})[t.user_attrs[INDEX]] = t
        self._reset()
        while self._gen in by_gen:
            done, gen = by_gen[self._gen], self._gen
            for i, t in done.items():
                if i < len(self._X):
                    self._X[i] = np.asarray(t.user_attrs[T.X], dtype=float)
            self._queue = [i for i in range(len(self._X)) if i not in done]
            for t in done.values():
                self.tell(t.user_attrs, told_values(t))
            if self._gen == gen:
                return
