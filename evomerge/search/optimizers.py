"""Optimizers as ask/tell objects; the driver owns the loop and the study owns the history.

Every optimizer builds the study's sampler and proposes candidates:

* :class:`CmaOptimizer` -- pycma's ``CMAEvolutionStrategy`` over the unit cube (bounds
  [0, 1]), minimizing :func:`~evomerge.search.objectives.weighted_loss`. Its proposals carry
  ``cma_gen`` / ``cma_index`` / ``x`` as trial attributes. After every generation its state
  is checkpointed in the study as JSON (:mod:`evomerge.search.cma_state`); resume starts
  from the checkpoint. Replaying the study (pycma is deterministic given its seed and the
  told values) remains a consistency check: on another machine its floating point may
  drift, which is logged as a warning, not refused.
* :class:`OptunaOptimizer` -- an Optuna sampler (TPE, CMA-ES, NSGA-II, GP, random) that asks
  through ``Study.ask``; its state already lives in the study.
* :class:`~evomerge.search.path_ga.PathGaOptimizer` (``path_ga``) -- a genetic algorithm over
  data-flow paths made of segments (``dfs`` spaces); state rebuilt from the study's trials.
* :class:`~evomerge.search.qd.MapElitesOptimizer` (``map_elites``) -- quality diversity: a
  MAP-Elites archive over descriptors taken from the objectives (pyribs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evomerge.engine.config_io import brief
from evomerge.errors import ConfigError
from evomerge.registry import Registry
from evomerge.search.cma_state import es_state, load_es_state
from evomerge.search.gene import Genome
from evomerge.search.objectives import weighted_loss
from evomerge.search.optimizer_base import FixedSampler, Optimizer, Proposal
from evomerge.search.optimizer_config import (
    CmaConfig,
    Nsga2Config,
    OptimizerConfig,
    OptunaCmaesConfig,
    TpeConfig,
)
from evomerge.search.path_ga import PathGaOptimizer
from evomerge.search.qd import MapElitesOptimizer
from evomerge.search.records import T, told_values
from evomerge.search.space_blocks import Objective

log = logging.getLogger(__name__)

__all__ = ["Proposal", "Optimizer", "FixedSampler", "CmaOptimizer", "OptunaOptimizer", "OptimizerSpec",
           "OPTIMIZERS", "register_optimizer", "make_optimizer", "given_point"]


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

    proposes = True

    def __init__(self, genome: Genome, objectives: Sequence[Objective],
                 config: CmaConfig) -> None:
        self.genome, self.objectives, self.config = genome, list(objectives), config
        self.sampler = FixedSampler()  # the study samples what ask() proposed
        self._es = self._new_es()
        self._checkpoint: dict[str, Any] | None = None  # taken between a tell and an ask
        self._start_generation()

    def _new_es(self):
        import cma

        opts = {"bounds": [0.0, 1.0], "seed": self.config.seed + 1, "verbose": -9}
        if self.config.popsize:
            opts["popsize"] = self.config.popsize
        if self.config.diagonal:
            opts["CMA_diagonal"] = True
        if isinstance(self.config.x0, dict):
            x0 = given_point(self.genome, self.config.x0)
        else:
            x0 = {"uniform": self.genome.start_point,
                  "center": lambda: np.full(self.genome.dim, 0.5),
                  "random": lambda: np.random.default_rng(self.config.seed).random(
                      self.genome.dim),
                  }[self.config.x0]()
        return cma.CMAEvolutionStrategy(x0, self.config.sigma0, opts)

    @property
    def popsize(self) -> int:
        return self._es.popsize

    def _start_generation(self) -> None:
        self._X = [np.asarray(x) for x in self._es.ask()]
        self._gen = self._es.countiter
        self._queue = list(range(len(self._X)))
        self._losses: dict[int, float | None] = {}
        self._rungs: dict[int, int | None] = {}

    def ask(self) -> Proposal | None:
        if not self._queue:
            return None
        i = self._queue.pop(0)
        x = self._X[i]
        return Proposal(self.genome.from_unit(x),
                        {T.CMA_GEN: self._gen, T.CMA_INDEX: i, T.X: [float(v) for v in x]})

    def tell(self, attrs: dict[str, Any], values: Sequence[float] | None) -> None:
        if attrs.get(T.CMA_GEN) != self._gen:
            return  # a straggler of an older generation: CMA-ES has moved on
        loss = None if values is None else weighted_loss(values, self.objectives)
        # A candidate pruned at a lower rung ranks below every one that went further.
        self._losses[attrs[T.CMA_INDEX]] = loss
        self._rungs[attrs[T.CMA_INDEX]] = attrs.get(T.FIDELITY_RUNG)
        if len(self._losses) == len(self._X):
            self._finish_generation()

    def _finish_generation(self) -> None:
        finite = [v for v in self._losses.values() if v is not None]
        # CMA-ES is rank-based: a failed candidate only has to rank below every success.
        worst = (max(finite) + 1.0 + abs(max(finite))) if finite else 1.0
        f = [self._losses[i] if self._losses[i] is not None else worst
             for i in range(len(self._X))]
        if any(r is not None for r in self._rungs.values()):
            f = _rung_ranks(f, [-1 if self._losses[i] is None else self._rungs.get(i)
                                for i in range(len(self._X))])
        self._es.tell(self._X, f)
        self._checkpoint = {"generation": int(self._es.countiter), "state": es_state(self._es)}
        self._start_generation()

    def checkpoint(self) -> dict[str, Any] | None:
        """The state after the last finished generation (before its successor was asked), as
        JSON: ``{"generation": g, "state": ...}``; None until a generation finishes."""
        return self._checkpoint

    def restore(self, trials: Sequence[Any],
                checkpoint: dict[str, Any] | None = None) -> None:
        """Rebuild the strategy: from ``checkpoint`` when it loads, then through the stored
        trials of later generations. Trials are finished ones carrying ``cma_gen`` /
        ``cma_index`` / ``x``, with ``values`` (None for failures). Duplicates told from the
        cache have no trial, so the driver re-derives them through its genome cache."""
        by_gen: dict[int, dict[int, Any]] = {}
        for t in trials:
            if T.CMA_GEN in t.user_attrs:
                by_gen.setdefault(t.user_attrs[T.CMA_GEN], {})[t.user_attrs[T.CMA_INDEX]] = t
        upto = checkpoint["generation"] if checkpoint else None
        self._es = self._new_es()
        self._start_generation()
        self._replay(by_gen, upto)  # from scratch: up to the checkpoint, or all of it
        if checkpoint is not None:
            replayed = _fingerprint(self._es) if self._gen == upto else None
            if replayed is None:  # the study lacks trials the checkpoint has seen
                log.warning("CMA-ES checkpoint of generation %d is ahead of the study's "
                            "trials (%d); resuming from the checkpoint", upto, self._gen)
            self._load(checkpoint, replayed)
        self._replay(by_gen, None)  # the generations after the checkpoint (or after the
        # replay, when the checkpoint could not be read)

    def _load(self, checkpoint: dict[str, Any], replayed: np.ndarray | None) -> None:
        """Start from ``checkpoint``, comparing it with the replayed state when there is one;
        an unreadable checkpoint leaves the replayed state in place."""
        rng = np.random.get_state()  # pycma samples from it; a new strategy reseeds it
        es = self._new_es()
        try:
            load_es_state(es, checkpoint["state"])
        except (ValueError, KeyError, TypeError) as exc:
            np.random.set_state(rng)
            log.warning("CMA-ES checkpoint not used (%s); state rebuilt by replaying the "
                        "study", exc)
            return
        if replayed is not None:
            mine = _fingerprint(es)
            drift = (float(np.max(np.abs(mine - replayed))) if mine.shape == replayed.shape
                     else float("inf"))
            if drift > 1e-9:
                log.warning("Replaying the study drifts from the CMA-ES checkpoint of "
                            "generation %d (max difference %.3g in mean, step size, paths or "
                            "covariance; another CPU or BLAS?): resuming from the checkpoint",
                            checkpoint["generation"], drift)
        self._es = es
        self._checkpoint = checkpoint
        self._start_generation()

    def _replay(self, by_gen: dict[int, dict[int, Any]], upto: int | None) -> None:
        """Tell the stored trials of each generation from the current one on (up to, not
        including, ``upto``); an incomplete generation leaves its missing points queued.
        Points that differ from what the strategy asks (drift) are told as stored."""
        while self._gen in by_gen and (upto is None or self._gen < upto):
            done = by_gen[self._gen]
            for i, t in done.items():
                x = np.asarray(t.user_attrs[T.X])
                if i < len(self._X) and not np.allclose(self._X[i], x, atol=1e-9):
                    log.warning("Trial %d differs from CMA-ES generation %d as replayed "
                                "(max %.3g); told as stored", t.number, self._gen,
                                float(np.max(np.abs(self._X[i] - x))))
                    self._X[i] = x
            gen = self._gen
            self._queue = [i for i in range(len(self._X)) if i not in done]
            for t in done.values():
                self.tell(t.user_attrs, told_values(t))
            if self._gen == gen:  # generation still incomplete: its missing points are queued
                return


def given_point(genome: Genome, params: dict[str, Any]) -> np.ndarray:
    """The unit-cube point of ``optimizer.x0`` given as gene values (a trial's ``params``):
    every gene named once, each value inside its gene's range or among its choices; else a
    ConfigError naming the gene and value."""
    genes = {g.name: g for g in genome.genes}
    missing = [n for n in genes if n not in params]
    unknown = [n for n in params if n not in genes]
    if unknown or missing:
        what = (f"names gene {brief(unknown[0])}, which this space's genome lacks" if unknown
                else f"lacks gene {missing[0]!r}")
        raise ConfigError(f"optimizer.x0 {what}: a given start names each of the "
                          f"{len(genes)} genes once ({', '.join(list(genes)[:3])}, ...).")
    for name, v in params.items():
        g = genes[name]
        ok = (isinstance(v, bool) if g.flag else v in g.choices if g.choices
              else not isinstance(v, bool | str) and g.low <= v <= g.high)
        if not ok:
            want = ("true or false" if g.flag else f"one of {list(g.choices)}" if g.choices
                    else f"a number in [{g.low:g}, {g.high:g}]")
            raise ConfigError(f"optimizer.x0.{name} {brief(v)} must be {want}.")
    return genome.to_unit(params)


def _rung_ranks(losses: list[float], rungs: list[int | None]) -> list[float]:
    """Ranks (0 = best) ordering candidates by the rung where they were pruned (None: not
    pruned, above every rung; -1: failed, below), then by loss. CMA-ES uses only the order
    of what it is told."""
    top = max((r for r in rungs if r is not None), default=0) + 1
    key = [(-(top if r is None else r), v) for r, v in zip(rungs, losses)]
    order = sorted(range(len(losses)), key=key.__getitem__)
    ranks = [0.0] * len(losses)
    for rank, i in enumerate(order):
        ranks[i] = float(rank)
    return ranks


def _fingerprint(es: Any) -> np.ndarray:
    """Mean, step size, evolution paths and covariance of a pycma strategy, flattened."""
    parts = [es.mean, [es.sigma], es.pc, getattr(es.adapt_sigma, "ps", []),
             getattr(es.sm, "C", [])]
    return np.concatenate([np.ravel(np.asarray(p, dtype=float)) for p in parts])


@dataclass(frozen=True)
class OptimizerSpec:
    """A registered optimizer: its name (``optimizer.name``, whose settings are
    :data:`~evomerge.search.optimizer_config.OPTIMIZER_CONFIGS` [name]) and how to build it."""

    name: str
    build: Callable[[OptimizerConfig, Genome, Sequence[Objective]], Optimizer]


OPTIMIZERS: Registry[OptimizerSpec] = Registry("optimizer")


def register_optimizer(spec: OptimizerSpec) -> OptimizerSpec:
    OPTIMIZERS.add(spec.name, spec)
    return spec


def _optuna(name: str, sampler: Callable[[Any, Any], Any]) -> OptimizerSpec:
    return register_optimizer(OptimizerSpec(
        name, lambda config, genome, objectives: OptunaOptimizer(config, sampler)))


def _tpe(s: Any, c: TpeConfig) -> Any:
    return s.TPESampler(seed=c.seed, multivariate=True, n_startup_trials=c.n_startup_trials)


def _cmaes(s: Any, c: OptunaCmaesConfig) -> Any:
    # Optuna 5 deprecates sigma0 (a FutureWarning) and names no replacement: pass it only
    # when the space sets it.
    extra = {"sigma0": c.sigma0} if c.sigma0 is not None else {}
    return s.CmaEsSampler(seed=c.seed, popsize=c.popsize, **extra)


def _nsga2(s: Any, c: Nsga2Config) -> Any:
    return s.NSGAIISampler(seed=c.seed, population_size=c.popsize)


register_optimizer(OptimizerSpec("cma", lambda config, genome, objectives: CmaOptimizer(
    genome, objectives, config)))
_optuna("tpe", _tpe)
_optuna("cmaes", _cmaes)
_optuna("nsga2", _nsga2)
_optuna("gp", lambda s, c: s.GPSampler(seed=c.seed))
_optuna("random", lambda s, c: s.RandomSampler(seed=c.seed))
register_optimizer(OptimizerSpec("path_ga", lambda config, genome, objectives: PathGaOptimizer(
    genome, objectives, config)))
register_optimizer(OptimizerSpec("map_elites", lambda config, genome, objectives:
                                 MapElitesOptimizer(genome, objectives, config)))


def make_optimizer(config: OptimizerConfig, genome: Genome,
                   objectives: Sequence[Objective]) -> Optimizer:
    """The optimizer registered as ``config.name``."""
    return OPTIMIZERS.get(config.name).build(config, genome, objectives)
