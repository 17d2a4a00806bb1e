"""Optimizers as ask/tell objects; the driver owns the loop and the study owns the history.

Every optimizer builds the study's sampler and proposes candidates:

* :class:`CmaOptimizer` -- pycma's ``CMAEvolutionStrategy`` over the unit cube (bounds
  [0, 1]), minimizing :func:`~evomerge.search.objectives.weighted_loss`. Its proposals carry
  ``cma_gen`` / ``cma_index`` / ``x`` as trial attributes; on resume the strategy is rebuilt
  by replaying the study: pycma is deterministic given its seed and the told values, so
  re-asking generation g reproduces the stored points (checked) and telling the stored
  values restores the state exactly, without storing a pickle.
* :class:`OptunaOptimizer` -- an Optuna sampler (TPE, CMA-ES, NSGA-II, GP, random) that asks
  through ``Study.ask``; its state already lives in the study.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evomerge.errors import EvomergeError
from evomerge.registry import Registry
from evomerge.search.genome import Genome
from evomerge.search.objectives import weighted_loss
from evomerge.search.space import Objective, OptimizerConfig

__all__ = ["Proposal", "Optimizer", "CmaOptimizer", "OptunaOptimizer", "OptimizerSpec",
           "OPTIMIZERS", "register_optimizer", "make_optimizer"]


@dataclass(frozen=True)
class Proposal:
    """A candidate to evaluate.

    Attributes:
        params: named gene values; ``None`` lets the study's sampler choose (Optuna).
        attrs: stored as trial user attributes (the optimizer's bookkeeping).
    """

    params: dict[str, Any] | None
    attrs: dict[str, Any] = field(default_factory=dict)


class Optimizer(ABC):
    """Ask/tell contract.

    ``ask()`` returns the next proposal, or ``None`` when nothing can be proposed until
    pending results are told (a CMA-ES generation barrier). ``tell(attrs, values)`` reports
    a finished proposal: objective values in objective order, or ``None`` if it failed.
    ``restore(trials)`` rebuilds the state from the study's finished trials.
    """

    sampler: Any

    @abstractmethod
    def ask(self) -> Proposal | None: ...

    @abstractmethod
    def tell(self, attrs: dict[str, Any], values: Sequence[float] | None) -> None: ...

    def restore(self, trials: Sequence[Any]) -> None:  # noqa: B027 -- optional hook
        """Rebuild state from finished trials (default: the sampler keeps it in the study)."""


class OptunaOptimizer(Optimizer):
    """An Optuna sampler; proposals are drawn by ``Study.ask`` itself.

    Args:
        sampler: ``sampler(optuna.samplers, config)`` builds the sampler.
    """

    def __init__(self, config: OptimizerConfig,
                 sampler: Callable[[Any, OptimizerConfig], Any]) -> None:
        import optuna

        self.sampler = sampler(optuna.samplers, config)

    def ask(self) -> Proposal:
        return Proposal(None)

    def tell(self, attrs: dict[str, Any], values: Sequence[float] | None) -> None:
        pass  # Study.tell records the result; the sampler reads it from the study


class CmaOptimizer(Optimizer):
    """pycma CMA-ES with bounds [0, 1] on the genome's unit cube (not ``cma.fmin2``)."""

    def __init__(self, genome: Genome, objectives: Sequence[Objective],
                 config: OptimizerConfig) -> None:
        import optuna

        self.genome, self.objectives, self.config = genome, list(objectives), config
        self.sampler = optuna.samplers.RandomSampler(seed=config.seed)  # enqueued params win
        self._es = self._new_es()
        self._start_generation()

    def _new_es(self):
        import cma

        opts = {"bounds": [0.0, 1.0], "seed": self.config.seed + 1, "verbose": -9}
        if self.config.popsize:
            opts["popsize"] = self.config.popsize
        if self.config.diagonal:
            opts["CMA_diagonal"] = True
        x0 = (self.genome.start_point() if self.config.x0 == "uniform"
              else np.full(self.genome.dim, 0.5))
        return cma.CMAEvolutionStrategy(x0, self.config.sigma0, opts)

    @property
    def popsize(self) -> int:
        return self._es.popsize

    def _start_generation(self) -> None:
        self._X = [np.asarray(x) for x in self._es.ask()]
        self._gen = self._es.countiter
        self._queue = list(range(len(self._X)))
        self._losses: dict[int, float | None] = {}

    def ask(self) -> Proposal | None:
        if not self._queue:
            return None
        i = self._queue.pop(0)
        x = self._X[i]
        return Proposal(self.genome.from_unit(x),
                        {"cma_gen": self._gen, "cma_index": i, "x": [float(v) for v in x]})

    def tell(self, attrs: dict[str, Any], values: Sequence[float] | None) -> None:
        if attrs.get("cma_gen") != self._gen:
            return  # a straggler of an older generation: CMA-ES has moved on
        loss = None if values is None else weighted_loss(values, self.objectives)
        self._losses[attrs["cma_index"]] = loss
        if len(self._losses) == len(self._X):
            self._finish_generation()

    def _finish_generation(self) -> None:
        finite = [v for v in self._losses.values() if v is not None]
        # CMA-ES is rank-based: a failed candidate only has to rank below every success.
        worst = (max(finite) + 1.0 + abs(max(finite))) if finite else 1.0
        f = [self._losses[i] if self._losses[i] is not None else worst
             for i in range(len(self._X))]
        self._es.tell(self._X, f)
        self._start_generation()

    def restore(self, trials: Sequence[Any]) -> None:
        """Replay the study: trials are finished ones carrying ``cma_gen``/``cma_index``, with
        ``values`` (None for failures). Duplicates told from the cache have no trial, so the
        driver re-derives them through its genome cache after restore."""
        by_gen: dict[int, dict[int, Any]] = {}
        for t in trials:
            if "cma_gen" in t.user_attrs:
                by_gen.setdefault(t.user_attrs["cma_gen"], {})[t.user_attrs["cma_index"]] = t
        self._es = self._new_es()
        self._start_generation()
        while self._gen in by_gen:
            done = by_gen[self._gen]
            for i, t in done.items():
                if i >= len(self._X) or not np.allclose(self._X[i], t.user_attrs["x"], atol=1e-9):
                    raise EvomergeError(
                        f"Cannot resume: trial {t.number} does not match CMA-ES generation "
                        f"{self._gen}; was the search space or optimizer seed changed?")
            gen = self._gen
            self._queue = [i for i in range(len(self._X)) if i not in done]
            for t in done.values():
                self.tell(t.user_attrs, t.values)
            if self._gen == gen:  # generation still incomplete: its missing points are queued
                return


@dataclass(frozen=True)
class OptimizerSpec:
    """A registered optimizer: how to build it, and whether it takes several objectives
    (natively, or as CMA-ES does through their weighted sum)."""

    name: str
    build: Callable[[OptimizerConfig, Genome, Sequence[Objective]], Optimizer]
    multi_objective: bool = True


OPTIMIZERS: Registry[OptimizerSpec] = Registry("optimizer")


def register_optimizer(spec: OptimizerSpec) -> OptimizerSpec:
    OPTIMIZERS.add(spec.name, spec)
    return spec


def _optuna(name: str, sampler: Callable[[Any, OptimizerConfig], Any],
            multi_objective: bool = True) -> OptimizerSpec:
    return register_optimizer(OptimizerSpec(
        name, lambda config, genome, objectives: OptunaOptimizer(config, sampler),
        multi_objective))


register_optimizer(OptimizerSpec("cma", lambda config, genome, objectives: CmaOptimizer(
    genome, objectives, config)))
_optuna("tpe", lambda s, c: s.TPESampler(seed=c.seed, multivariate=True, n_startup_trials=10))
_optuna("cmaes", lambda s, c: s.CmaEsSampler(seed=c.seed, popsize=c.popsize,
                                             sigma0=c.sigma0 if c.sigma0 else None),
        multi_objective=False)
_optuna("nsga2", lambda s, c: s.NSGAIISampler(seed=c.seed, population_size=c.popsize or 16))
_optuna("gp", lambda s, c: s.GPSampler(seed=c.seed))
_optuna("random", lambda s, c: s.RandomSampler(seed=c.seed))


def make_optimizer(config: OptimizerConfig, genome: Genome,
                   objectives: Sequence[Objective]) -> Optimizer:
    """The optimizer registered as ``config.name``."""
    return OPTIMIZERS.get(config.name).build(config, genome, objectives)
