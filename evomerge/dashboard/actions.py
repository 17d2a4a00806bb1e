"""The dashboard's two actions: resume a stopped study, export a trial's recipe.

Resume starts the study again the way it was launched (recorded in the study's
``evomerge_launch`` attribute): a new Slurm job through :func:`evomerge.cluster.slurm.submit`, or a
detached local ``evomerge resume`` process. Study names and paths read from the storage only
ever become items of an argument list, never part of a shell command line.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from evomerge.dashboard.catalog import driver_state
from evomerge.errors import ConfigError
from evomerge.search.records import StudyRecord

__all__ = ["resume_study", "export_yaml", "local_resume_command"]


def local_resume_command(study: Any, url: str, launch: dict[str, Any]) -> list[str]:
    """The argument list of a local ``evomerge resume`` for ``study``."""
    cmd = [sys.executable, "-m", "evomerge", "resume", study.study_name, "--storage", url,
           "--results", str(launch.get("results", "results")),
           "--workers", str(int(launch.get("workers", 0))), "-q"]
    for key, value in (launch.get("ray_options") or {}).items():
        if key in ("num_gpus", "num_cpus", "timeout", "max_retries") and value is not None:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    return cmd


def resume_study(study: Any, url: str) -> dict[str, Any]:
    """Start ``study`` again; refuses while its driver is alive or its budget is done."""
    state = driver_state(study)
    if state == "running":
        raise ConfigError(f"Study {study.study_name!r} is running; nothing to resume.")
    launch = StudyRecord(study).launch
    if launch.get("via") == "slurm":
        from evomerge.cluster.slurm import SlurmOptions, submit

        job = submit(None, SlurmOptions(**launch.get("options", {})), study=study.study_name,
                     storage=url, results=launch.get("results", "results"))
        return {"via": "slurm", "job_id": job.job_id}
    cmd = local_resume_command(study, url, launch)
    log_dir = Path(launch.get("results", "results")) / study.study_name
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / "resume.log", "ab")  # noqa: SIM115 -- handed to the child process
    proc = subprocess.Popen(cmd, cwd=launch.get("cwd") or None, stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    return {"via": "local", "pid": proc.pid, "log": str(log_dir / "resume.log")}


def export_yaml(study: Any, number: int) -> str:
    """The mergekit-compatible recipe YAML of trial ``number`` (as `evomerge export` writes it)."""
    from evomerge.search.export import export_recipe
    from evomerge.search.ledger import space_of

    with tempfile.TemporaryDirectory() as tmp:
        out = export_recipe(study, space_of(study), Path(tmp) / "recipe.yaml", trial=number)
        return out.read_text()
