"""Third-party chatter off by default: evomerge's commands print their own progress and
results; transformers' per-model progress bars, library deprecation warnings and INFO logs
(lm-eval, Optuna, Ray, datasets) come back with ``evomerge -v``."""

from __future__ import annotations

import logging
import os
import warnings

__all__ = ["quiet_third_party"]

_LOGGERS = ("transformers", "lm-eval", "lm_eval", "optuna", "datasets", "ray", "torch",
            "urllib3", "filelock", "huggingface_hub", "accelerate", "evaluate")


def quiet_third_party() -> None:
    """Silence other libraries' progress bars, warnings and INFO logs in this process and in
    the processes it starts (Ray actors, Slurm steps inherit the environment)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::FutureWarning")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
