"""Each optimizer's settings, its own pydantic model, joined in a discriminated union on
``name`` (as evaluator options are): a setting that does not apply to the chosen optimizer is
an error naming it (``sigma0`` on ``tpe``), never silently ignored.

    optimizer: {name: cma, popsize: 12, sigma0: 0.12, seed: 0}
    optimizer: {name: tpe, seed: 3}

``objectives`` (a class attribute) says how an optimizer treats several objectives:
``pareto`` (natively multi-objective: NSGA-II, TPE, GP, random), ``weighted_sum`` (CMA-ES
minimizes sum_i w_i * (+-v_i), :func:`~evomerge.search.objectives.weighted_loss`) or ``one``
(a single objective only).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from evomerge.engine.arch import MAX_LAYERS  # one depth bound, the engine's
from evomerge.search.path_ops import Operator

__all__ = ["OptimizerConfig", "CmaConfig", "TpeConfig", "OptunaCmaesConfig", "Nsga2Config",
           "GpConfig", "RandomConfig", "PathGaConfig", "MapElitesConfig",
           "OPTIMIZER_CONFIGS", "optimizer_config_input", "MAX_POPSIZE", "MAX_CELLS"]

# Bounds on what a space file may ask for (spaces are data: no setting may demand unbounded
# memory). A generation is held in memory as gene vectors; an archive as cells x genes.
MAX_POPSIZE = 10_000
MAX_CELLS = 65_536  # a MAP-Elites grid: bins ** descriptors


class _Optimizer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    objectives: ClassVar[Literal["pareto", "weighted_sum", "one"]] = "pareto"
    seed: int = Field(0, ge=0, lt=2**32)  # every sampler's seed range (numpy, Optuna)

    @property
    def multi_objective(self) -> bool:
        """Whether the optimizer takes several objectives (natively or as a weighted sum)."""
        return self.objectives != "one"


class CmaConfig(_Optimizer):
    """pycma CMA-ES over the genome's unit cube (evomerge's default)."""

    objectives: ClassVar = "weighted_sum"
    name: Literal["cma"] = "cma"
    popsize: int | None = Field(None, ge=2, le=MAX_POPSIZE)  # default 4 + 3 ln(dim)
    # Initial step in unit-cube coordinates; where it starts: the uniform soup (weight 1/n),
    # the box centre, or a uniform random point drawn with ``seed`` (mergekit-evolve's
    # ``random_init``). Chosen with bench/search_efficiency.py (docs/benchmarks.md).
    sigma0: float = Field(0.12, gt=0, le=1)
    # ... or a given point: every gene by name, in its own units (a trial's ``params``), or
    # another study's point (``study:NAME#best``, ``#trial=N``), pinned to its gene values when
    # the study starts (search.chain); checked against the genome before the study exists.
    # (a NaN or infinite gene value passes here so that given_point names the gene)
    x0: (Literal["center", "uniform", "random"]
         | dict[str, Annotated[float, Field(allow_inf_nan=True)] | bool | str]
         | Annotated[str, Field(pattern=r"^study:")]) = "uniform"
    # The study point a pinned ``x0`` was resolved from (set when it is pinned): a resume
    # naming the same point keeps the stored values, another point is another search.
    x0_from: str | None = None
    # Separable CMA-ES (pycma ``CMA_diagonal``): per-gene step sizes only.
    diagonal: bool = False


class TpeConfig(_Optimizer):
    """Optuna's multivariate TPE."""

    name: Literal["tpe"]
    n_startup_trials: int = Field(10, ge=1)  # random trials before TPE models the study


class OptunaCmaesConfig(_Optimizer):
    """Optuna's ``CmaEsSampler`` (one objective)."""

    objectives: ClassVar = "one"
    name: Literal["cmaes"]
    popsize: int | None = Field(None, ge=2, le=MAX_POPSIZE)
    sigma0: float | None = Field(None, gt=0)  # in the genes' own units; None: Optuna's default


class Nsga2Config(_Optimizer):
    """Optuna's NSGA-II."""

    name: Literal["nsga2"]
    popsize: int = Field(16, ge=2, le=MAX_POPSIZE)


class GpConfig(_Optimizer):
    """Optuna's Gaussian-process sampler."""

    name: Literal["gp"]


class RandomConfig(_Optimizer):
    """Uniform random sampling (a baseline)."""

    name: Literal["random"]


class PathGaConfig(_Optimizer):
    """Structured data-flow search (:mod:`evomerge.search.path_ga`): a path is a sequence of
    (model, layer range, scale) segments, evolved by mutation and crossover. ``dfs`` spaces
    only."""

    objectives: ClassVar = "weighted_sum"
    name: Literal["path_ga"]
    popsize: int = Field(8, ge=2, le=MAX_POPSIZE)  # candidates per generation
    parents: int = Field(4, ge=1, le=MAX_POPSIZE)  # best paths so far that breed (elitist)
    crossover: float = Field(0.3, ge=0, le=1)  # share of children made by crossover
    # Where generation 0 starts: these models' own paths and their mutants (default:
    # dfs.start, else every model; a PS merge named as a model gives PS+DFS).
    starts: list[str] | None = None
    scale_sigma: float = Field(0.15, gt=0)  # log-normal step of a transition's scale
    max_shift: int = Field(3, ge=1, le=MAX_LAYERS)  # layers a boundary moves / a new segment spans
    # Most layers one re-source, delete, duplicate or insert touches (default: up to a whole
    # segment); 1 or 2 keep the search near its start (a PS merge's path, say).
    reach: int | None = Field(None, ge=1, le=MAX_LAYERS)
    # Mutations of each generation-0 mutant of a start (default: one, a second with
    # probability 0.3, as later); more spread the first generation around the starts.
    init_mutations: int | None = Field(None, ge=1, le=64)
    # Share of generation 0's other candidates that are splices of two different starts (one
    # start's path with a run of another's layers at their own depth), not mutants; default 0.
    init_splices: float = Field(0.0, ge=0, le=1)
    # The mutation operators drawn from (default: all; 'scale' only where scaling is not none)
    operators: list[Operator] | None = Field(None, min_length=1)


class MapElitesConfig(_Optimizer):
    """Quality-diversity search (:mod:`evomerge.search.qd`): a MAP-Elites archive of the best
    candidate per cell of a grid over behaviour descriptors taken from the objectives."""

    objectives: ClassVar = "weighted_sum"  # quality: the weighted loss of every objective
    name: Literal["map_elites"]
    # Objective keys (task/metric) whose values place a candidate in the grid; default: the
    # first two objectives.
    descriptors: list[str] | None = Field(None, min_length=1)
    bins: int = Field(8, ge=2, le=1024)     # cells per descriptor (MAX_CELLS in all: grid_of)
    # [low, high] per descriptor; default: [0, 1] on exp(-v) of a minimized objective (an
    # answer NLL becomes a per-token probability) and on v of a maximized one
    ranges: list[tuple[float, float]] | None = None
    popsize: int = Field(8, ge=1, le=MAX_POPSIZE)  # candidates per generation
    # Variation (pyribs' iso+line operator; merging as crossover): a child is an elite plus
    # iso_sigma * N(0, I) plus line_sigma * N(0, 1) * (another elite - it), in the unit cube.
    # Data-flow spaces: path crossover between two elites and path mutations instead.
    iso_sigma: float = Field(0.05, gt=0)
    line_sigma: float = Field(0.3, ge=0)

    @model_validator(mode="after")
    def _check(self) -> MapElitesConfig:
        if self.descriptors is not None and len(set(self.descriptors)) < len(self.descriptors):
            raise ValueError(f"optimizer.descriptors {self.descriptors} names an objective "
                             "twice (a diagonal grid whose other cells stay empty)")
        if self.ranges is not None:
            if self.descriptors is None or len(self.ranges) != len(self.descriptors):
                raise ValueError("optimizer.ranges needs one [low, high] per descriptor "
                                 "(name the descriptors)")
            for lo, hi in self.ranges:
                if not lo < hi:
                    raise ValueError(f"optimizer.ranges [{lo}, {hi}] must have low < high")
        return self


OPTIMIZER_CONFIGS: dict[str, type[_Optimizer]] = {
    "cma": CmaConfig, "tpe": TpeConfig, "cmaes": OptunaCmaesConfig, "nsga2": Nsga2Config,
    "gp": GpConfig, "random": RandomConfig, "path_ga": PathGaConfig,
    "map_elites": MapElitesConfig}

OptimizerConfig = Annotated[Union[CmaConfig, TpeConfig, OptunaCmaesConfig, Nsga2Config,  # noqa: UP007
                                  GpConfig, RandomConfig, PathGaConfig,
                                  MapElitesConfig],
                            Field(discriminator="name")]


def optimizer_config_input(value: Any) -> Any:
    """Before validation: a block without ``name`` is CMA-ES; an unknown name is one
    sentence listing the valid ones."""
    if isinstance(value, dict):
        name = value.get("name", "cma")
        # a list or mapping as the name is unhashable: test membership by equality
        if not isinstance(name, str) or name not in OPTIMIZER_CONFIGS:
            raise ValueError(f"optimizer.name {name!r} is not one of "
                             f"{', '.join(OPTIMIZER_CONFIGS)}")
        return {**value, "name": name}
    return value
