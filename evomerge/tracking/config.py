"""Each experiment tracker's options: one pydantic model per tracker, joined in a union
discriminated by ``type`` (an option that does not apply to the chosen tracker is an error).

    tracking: {type: mlflow, tracking_uri: http://mlflow.internal:5000, experiment: merges}
    tracking: {type: wandb, project: merges, mode: offline}
    tracking: {type: trackio, project: merges}

``--track`` on ``search``, ``resume`` and ``slurm submit`` takes a tracker name (its
defaults) or such a mapping as inline YAML.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from evomerge.errors import ConfigError

__all__ = ["MlflowTracking", "WandbTracking", "TrackioTracking", "TrackingConfig",
           "TRACKERS", "parse_track", "confine", "destinations"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MlflowTracking(_Strict):
    """MLflow: one run per study in ``experiment`` (default: the study's name) on
    ``tracking_uri`` (default: MLflow's own, ``MLFLOW_TRACKING_URI`` or ``./mlruns``)."""

    type: Literal["mlflow"]
    tracking_uri: str | None = None
    experiment: str | None = None
    artifact_location: str | None = None  # of a new experiment (default: MLflow's)
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


_SERVER_NAMES = ("databricks", "databricks-uc")  # MLflow URIs without a scheme's colon


def _inside(path: str, place: Path, field: str) -> Path:
    if "%" in path or "$" in path or "\\" in path:  # decoded or expanded later: %2e%2e is ..
        raise ConfigError(f"{field} {path!r} holds '%', '$' or a backslash; a path in a "
                          "space is taken as written, so give a plain relative path.")
    p = PurePath(path)
    if p.is_absolute() and ".." not in p.parts and Path(p).is_relative_to(place):
        return Path(p)  # as a study records it, once taken into its folder
    if p.is_absolute() or ".." in p.parts or path.startswith("~"):
        raise ConfigError(f"{field} {path!r} is outside the study's folder {str(place)!r}: a "
                          "space or a study picks no place to write (a relative path is taken "
                          "there); give another place on the command line with --track.")
    return place / p


def confine(config: Any, place: Path) -> Any:
    """``config`` as read from a space or a study (data) with the files it writes on this
    machine kept in ``place``, the study's results folder: a relative path (MLflow's
    ``tracking_uri`` as a path, ``file:`` or ``sqlite:///`` URI; W&B's ``dir``) is taken
    there, an absolute one or one leaving it is refused, and the trackers' own defaults in the
    working directory become ``place`` too (unless ``MLFLOW_TRACKING_URI`` / ``WANDB_DIR``
    is set). ``--track`` (the command line) is not confined. A server's URL is left as it is
    (docs/trackers.md)."""
    place = Path(place).absolute()
    if isinstance(config, WandbTracking):
        if not config.dir:  # W&B's default is ./wandb; WANDB_DIR (the environment) wins
            return config if os.environ.get("WANDB_DIR") else config.model_copy(
                update={"dir": str(place)})
        return config.model_copy(update={"dir": str(_inside(config.dir, place, "tracking.dir"))})
    if not isinstance(config, MlflowTracking):
        return config
    if not config.tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI"):
        config = config.model_copy(update={"tracking_uri": "sqlite:///mlflow.db"})  # not ./
    update = {}
    if config.artifact_location:
        update["artifact_location"] = str(_inside(config.artifact_location.removeprefix(
            "file://"), place, "tracking.artifact_location"))
    if not config.tracking_uri:
        return config.model_copy(update=update)
    uri, field = config.tracking_uri, "tracking.tracking_uri"
    if _is_server(uri):
        return config.model_copy(update=update)
    scheme = _scheme(uri)
    if scheme == "":
        local = str(_inside(uri, place, field))
    elif scheme == "file":
        rest = uri[5:].removeprefix("//")
        local = str(_inside(rest or ".", place, field)) if rest else str(place)
    elif scheme == "sqlite" and uri.startswith("sqlite:///"):  # MLflow's own driver only
        local = "sqlite:///" + str(_inside(uri[len("sqlite:///"):], place, field))
    else:
        servers = ", ".join(_SERVER_SCHEMES)
        raise ConfigError(f"{field} {uri!r} is neither a server's URL ({servers}) nor a "
                          "store in the study's folder (a relative path, file: or "
                          "sqlite:///); give other stores on the command line with --track.")
    # a local store keeps its artifacts beside it, not in ./mlruns of the working directory
    update.setdefault("artifact_location", str(place / "mlartifacts"))
    return config.model_copy(update={"tracking_uri": local, **update})


def destinations(config: Any, place: Path) -> list[str]:
    """Where a tracker's options, as a space or a study gives them, send or write the study
    outside ``place``, its results folder (the dashboard's Resume refuses a study whose
    tracker names any): a server, W&B's servers, a Hugging Face Space, or a path that
    :func:`confine` refuses."""
    out = []
    try:
        confine(config, place)
    except ConfigError:
        out.append("a place outside its folder")
    if isinstance(config, MlflowTracking) and config.tracking_uri:
        if _is_server(config.tracking_uri):
            out.append(f"MLflow at {config.tracking_uri!r}")
    if isinstance(config, WandbTracking) and config.mode not in ("offline", "disabled"):
        out.append(f"W&B's servers (project {config.project!r})")
    if isinstance(config, TrackioTracking) and config.space_id:
        out.append(f"the Hugging Face Space {config.space_id!r}")
    return out


# MLflow stores that are not files on this machine
_SERVER_SCHEMES = ("http", "https", "databricks", "databricks-uc", "postgresql", "mysql",
                   "mssql", "uc")


def _is_server(uri: str) -> bool:
    """An MLflow store on a server (no file on this machine); a driver given with ``+``
    (``postgresql+psycopg2``) is not one evomerge passes on."""
    return uri in _SERVER_NAMES or (_scheme(uri) in _SERVER_SCHEMES
                                    and "+" not in uri.split(":", 1)[0])


def _scheme(uri: str) -> str:
    """A URI's scheme as MLflow reads it (``sqlite+pysqlite`` is ``sqlite``; a one-letter
    one is a Windows drive); '' for a plain path."""
    head = uri.split("/", 1)[0]
    if ":" not in head:
        return ""
    scheme = head.split(":", 1)[0].lower()
    return "drive" if len(scheme) == 1 else scheme.split("+", 1)[0]
