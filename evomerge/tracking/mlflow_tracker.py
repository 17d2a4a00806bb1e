"""MLflow: one run per study, written through ``MlflowClient`` (no global active run).

Parameters: the space, flattened (``space.optimizer.name``...); the full space and genome as
files. Metrics: per trial and per generation (:mod:`evomerge.search.tracking`). An
unreachable server costs ``timeout x (retries + 1)`` seconds once, then the tracker stops
(``MLFLOW_HTTP_REQUEST_TIMEOUT`` / ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` in the environment win).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from evomerge.tracking.base import Tracker, flatten, quiet
from evomerge.tracking.config import MlflowTracking

__all__ = ["MlflowTracker"]

_BATCH = 100        # parameters per request (MLflow's limit)
_MAX_VALUE = 6000   # characters of one parameter value (MLflow's limit)


class MlflowTracker(Tracker):
    kind = "mlflow"

    def __init__(self, config: MlflowTracking) -> None:
        self.config = config
        self.client: Any = None
        self.run_id = ""

    def start(self, name: str, config: dict[str, Any], run_id: str | None) -> str:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(self.config.timeout)))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(self.config.retries))
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.client = MlflowClient(tracking_uri=self.config.tracking_uri)
        if run_id:
            self._check_place(self.client.get_run(run_id).info.artifact_uri)
            self.client.update_run(run_id, status="RUNNING")  # fails if the run is gone
            self.run_id = run_id
            return run_id
        experiment = self.config.experiment or name
        found = self.client.get_experiment_by_name(experiment)
        if found:
            self._check_place(found.artifact_location)
        exp_id = found.experiment_id if found else self.client.create_experiment(
            experiment, artifact_location=self.config.artifact_location)
        run = self.client.create_run(exp_id, run_name=self.config.run_name or name,
                                     tags={"evomerge.study": name, **self.config.tags})
        self.run_id = run.info.run_id
        params = [Param(k[:250], v[:_MAX_VALUE]) for k, v in flatten(config).items()]
        for i in range(0, len(params), _BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + _BATCH])
        return self.run_id

    def _check_place(self, location: str) -> None:
        """A confined store (``artifact_location`` set: the space's tracker) records where
        artifacts go, and that record is data in the study's folder: e.g. the folder's old
        place after it moved. Outside ``artifact_location`` this run is not tracked (the
        error becomes a warning; the search goes on)."""
        want = self.config.artifact_location
        if want and not Path(location.removeprefix("file://")).is_relative_to(want):
            raise RuntimeError(f"the MLflow store keeps its artifacts in {location!r}, not "
                               f"in {want!r}")

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    def log_files(self, files: list[Path]) -> None:
        for f in files:
            self.client.log_artifact(self.run_id, str(f))

    def finish(self) -> None:
        with quiet():
            self.client.set_terminated(self.run_id)
