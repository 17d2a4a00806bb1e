"""The search, one module per step of the data flow:

* ``space``      -- the validated search-space YAML (:class:`SearchSpace`, :func:`load_space`);
* ``genome``     -- genes derived from the methods' parameter specs, decoded to recipes;
* ``optimizers`` -- the registry of ask/tell optimizers (pycma CMA-ES, Optuna samplers);
* ``driver``     -- the loop that owns ask -> evaluate -> tell (:func:`run_search`);
* ``executors``  -- the :class:`Executor` protocol and the in-process executor;
  ``ray_executor`` -- resident-model Ray actors; ``worker`` -- materialize + evaluate;
* ``ledger``     -- the Optuna study that stores every evaluation (resume, dashboard);
* ``front``, ``pareto`` -- the Pareto front and hypervolume; ``export`` -- a trial's recipe;
* ``heldout``    -- the report that re-scores front, sources and uniform recipes on test.

Names below are imported on first use, so ``import evomerge.search`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SearchSpace": "space", "load_space": "space", "Genome": "genome",
    "OPTIMIZERS": "optimizers", "make_optimizer": "optimizers", "run_search": "driver",
    "SearchOutcome": "driver", "Executor": "executors", "InlineExecutor": "executors",
    "Worker": "worker", "CandidateResult": "worker", "build_evaluators": "worker",
    "export_recipe": "export", "write_front": "front", "make_report": "heldout",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'evomerge.search' has no attribute {name!r}")
    return getattr(importlib.import_module(f"evomerge.search.{_EXPORTS[name]}"), name)
