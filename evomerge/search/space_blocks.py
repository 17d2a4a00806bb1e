"""The blocks of a search space below its top level: ``layer_swap``, ``dfs``, ``evaluators``,
``objectives``, ``budget`` and ``fidelity`` (:mod:`evomerge.search.space` checks them against
the rest of the space)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["LayerSwap", "DataFlow", "EvaluatorConfig", "Objective", "Budget", "Fidelity"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class LayerSwap(_Strict):
    """Per layer group, a categorical gene choosing who supplies it."""

    choices: list[str] | None = None  # aliases, "base", "merge"; default: all that apply


class DataFlow(_Strict):
    """Data-flow-space search (Sakana's DFS, :mod:`evomerge.search.dfs`): the layers of all
    models, in order, ``repeats`` times, make T = M*L*r slots; a flag per slot puts that layer
    on the path (the first ``max_length`` flagged slots, in slot order), and the hidden state
    entering a layer is scaled by ``none`` (1), ``pair`` (one scalar per pair of models whose
    layers meet: Sakana's W) or ``slot`` (one scalar per slot) in ``scale`` bounds.
    ``start``: the model whose own layer sequence CMA-ES starts from (default: the first)."""

    repeats: int = Field(2, ge=1, le=16)  # Sakana used 3; T = M*L*r flags and slots
    max_length: int | None = Field(None, ge=1, le=100_000)
    scaling: Literal["none", "pair", "slot"] = "pair"
    scale: tuple[float, float] = (0.5, 2.0)
    start: str | None = None

    @model_validator(mode="after")
    def _check(self) -> DataFlow:
        lo, hi = self.scale
        if not 0 < lo < hi:
            raise ValueError(f"dfs.scale bounds [{lo}, {hi}] must satisfy 0 < low < high")
        if not lo <= 1 <= hi:
            raise ValueError(f"dfs.scale bounds [{lo}, {hi}] must contain 1 (no scaling)")
        return self


class EvaluatorConfig(BaseModel):
    """An evaluator by registry name plus its options."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Objective(_Strict):
    """One score to optimize: ``evaluator``'s metric ``task/metric`` and its direction."""

    evaluator: str
    task: str
    metric: str
    direction: Literal["maximize", "minimize"]
    weight: float = Field(1.0, gt=0)  # used only by single-objective optimizers (weighted sum)
    # in the weighted sum (cma, path_ga, map_elites; best-point picks) a value better than
    # ``target`` counts as ``target``: keep a skill at a level, trade nothing for more of it
    target: float | None = Field(None, allow_inf_nan=False)

    @property
    def key(self) -> str:
        return f"{self.task}/{self.metric}"


class Budget(_Strict):
    trials: int = Field(gt=0)                    # finished evaluations (duplicates excluded)
    wall_time: float | None = Field(None, gt=0)  # seconds; the search stops when either ends


class Fidelity(_Strict):
    """Cheaper fitness (:mod:`evomerge.search.fidelity`). A candidate is scored on rung 0
    first (a fraction of every evaluator's examples), and goes on to the next rung only while
    it is in the best 1/eta of the candidates scored at its rung (successive halving);
    otherwise it is stored as pruned with its rung scores. ``estimator``: how a rung's score
    stands for the full one: ``subset`` (a seeded random subset, nested across rungs),
    ``anchors`` (examples chosen from the response patterns of the first ``warmup``
    candidates, scored in full, each weighted by the examples it stands for), or ``pirt`` /
    ``gpirt`` (the same anchors, valued by tinyBenchmarks' IRT estimates). A last rung
    below 1 means later candidates are never scored in full: their values are estimates."""

    rungs: list[float] = Field([1.0], min_length=1)
    eta: float = Field(3.0, gt=1)
    estimator: Literal["subset", "anchors", "pirt", "gpirt"] = "subset"
    warmup: int = Field(0, ge=0, le=100_000)
    seed: int = Field(0, ge=0, lt=2**32)

    @model_validator(mode="after")
    def _check(self) -> Fidelity:
        r = self.rungs
        if any(not 0 < f <= 1 for f in r) or any(a >= b for a, b in zip(r, r[1:])):
            raise ValueError(f"fidelity.rungs {r} must be increasing fractions in (0, 1]")
        if self.estimator != "subset" and self.warmup < 2:
            raise ValueError(f"fidelity.warmup {self.warmup} is too small: anchors are chosen "
                             "from the candidates scored in full first (give at least 2)")
        return self
