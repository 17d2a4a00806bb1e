"""Each experiment tracker's options: one pydantic model per tracker, joined in a union
discriminated by ``type`` (an option that does not apply to the chosen tracker is an error).

    tracking: {type: mlflow, tracking_uri: http://mlflow.internal:5000, experiment: merges}
    tracking: {type: wandb, project: merges, mode: offline}
    tracking: {type: trackio, project: merges}

``--track`` on ``search``, ``resume`` and ``slurm submit`` takes a tracker name (its
defaults) or such a mapping as inline YAML.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from evomerge.errors import ConfigError

__all__ = ["MlflowTracking", "WandbTracking", "TrackioTracking", "TrackingConfig",
           "TRACKERS", "parse_track"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MlflowTracking(_Strict):
    """MLflow: one run per study in ``experiment`` (default: the study's name) on
    ``tracking_uri`` (default: MLflow's own, ``MLFLOW_TRACKING_URI`` or ``./mlruns``)."""

    type: Literal["mlflow"]
    tracking_uri: str | None = None
    experiment: str | None = None
    run_name: str | None = None       # default: the study's name
    tags: dict[str, str] = {}
    timeout: float = Field(10.0, gt=0)  # seconds per HTTP request before a retry
    retries: int = Field(2, ge=0)       # an unreachable server costs timeout x (retries + 1)


class WandbTracking(_Strict):
    """Weights & Biases: one run per study in ``project``; ``mode: offline`` writes the run
    under ``dir`` for ``wandb sync`` later (default: W&B's own setting, ``WANDB_MODE``)."""

    type: Literal["wandb"]
    project: str = "evomerge"
    entity: str | None = None
    mode: Literal["online", "offline", "disabled"] | None = None
    dir: str | None = None
    group: str | None = None
    tags: list[str] = []


class TrackioTracking(_Strict):
    """trackio: one run per study in ``project``, in trackio's local store (its dashboard:
    ``trackio show``); ``space_id`` also syncs it to a Hugging Face Space."""

    type: Literal["trackio"]
    project: str = "evomerge"
    space_id: str | None = None


TrackingConfig = Annotated[MlflowTracking | WandbTracking | TrackioTracking,
                           Field(discriminator="type")]
TRACKERS = ("mlflow", "wandb", "trackio")
_ADAPTER: TypeAdapter[Any] = TypeAdapter(TrackingConfig)


def parse_track(text: str) -> Any:
    """``--track``'s value: a tracker name (``mlflow``) or an inline YAML mapping
    (``{type: wandb, mode: offline}``), validated.

    Raises:
        ConfigError: an unknown tracker or option, in one sentence.
    """
    data: Any = {"type": text} if text in TRACKERS else None
    if data is None:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            data = None
        if not isinstance(data, dict):
            raise ConfigError(f"--track {text!r} is neither a tracker ({', '.join(TRACKERS)}) "
                              "nor a YAML mapping like \"{type: mlflow, tracking_uri: URL}\".")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"--track: {where or 'type'}: {err['msg']} "
                          f"(got {err.get('input')!r}).") from None
