"""The dashboard's two actions: resume a stopped study, export a trial's recipe.

Resume starts the study again the way it was launched (the study's launch record,
:class:`~evomerge.search.records.StudyRecord`): a new Slurm job through
:func:`evomerge.cluster.slurm.submit`, or a detached local ``evomerge resume`` process.

A study file is data: it may come from a colleague or a shared filesystem. So what resume
runs and where it writes never come from the study unchecked:

- the program is this installation's evomerge: ``sys.executable -P -m evomerge`` with this
  package's own directory first on ``PYTHONPATH`` (``-P``: the working directory is not put
  on ``sys.path``, so no ``evomerge/__main__.py`` there is ever imported);
- the storage URL and the results root are the dashboard's own (from its command line),
  not the ones recorded in the study;
- the recorded working directory (where relative model paths were written) is used only if
  it is an existing directory that this user owns and no one else may write to;
- numbers recorded for Ray (workers, GPUs, CPUs, timeout, retries) must be numbers, and a
  Slurm resubmission takes the recorded resources but only the extra ``sbatch`` options of
  :data:`SAFE_SBATCH_OPTIONS` (``--export=LD_PRELOAD=...`` would pick code to run);
- a study whose space names code to run (a ``callable`` evaluator, an lm-eval task
  directory, whose YAML may call Python) is not resumed from the dashboard: its owner
  resumes it from the command line.

Study names and paths only ever become items of an argument list, never a shell command line.
"""

from __future__ import annotations

import math
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from evomerge.dashboard.catalog import driver_state
from evomerge.engine.config_io import format_validation_error
from evomerge.errors import ConfigError
from evomerge.names import check_name
from evomerge.search.records import StudyRecord
from evomerge.tracking.config import destinations

__all__ = ["resume_study", "export_yaml", "local_resume_command", "code_in_space",
           "SAFE_SBATCH_OPTIONS"]

_RAY_NUMBERS = {"num_gpus": float, "num_cpus": float, "timeout": float, "max_retries": int}
# Resource and accounting options a study may carry into a resubmitted Slurm job.
SAFE_SBATCH_OPTIONS = ("--account", "--qos", "--constraint", "--mem", "--mem-per-cpu",
                       "--mem-per-gpu", "--gres", "--exclusive", "--reservation", "--comment",
                       "--nice", "--mail-type", "--exclude", "--nodelist")


def _number(key: str, value: Any, kind: type) -> int | float:
    """A recorded launch number, checked: a bool, text or a non-finite value is refused."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (kind is int and value != int(value)) or value < 0:
        raise ConfigError(f"The study's recorded launch option {key} = {value!r} is not a "
                          "number; resume it from the command line.")
    return kind(value)


def local_resume_command(study: Any, url: str, results: str | Path,
                         launch: dict[str, Any]) -> list[str]:
    """The argument list of a local ``evomerge resume`` of ``study``: this interpreter, the
    installed package's entry point, the dashboard's storage URL and results root; from the
    study only its (checked) name and numbers."""
    name = check_name(study.study_name, "study name")
    workers = _number("workers", launch.get("workers", 0), int)
    cmd = [sys.executable, "-P", "-m", "evomerge", "resume", name, "--storage", url,
           "--results", str(results), "--workers", str(workers), "-q"]
    for key, value in (launch.get("ray_options") or {}).items():
        if key in _RAY_NUMBERS and value is not None:
            cmd += [f"--{key.replace('_', '-')}", str(_number(key, value, _RAY_NUMBERS[key]))]
    return cmd


def _own_environment() -> dict[str, str]:
    """This process's environment with this package's directory first on PYTHONPATH, so the
    child imports the evomerge the dashboard runs (an installed or a checked-out one)."""
    import evomerge

    root = str(Path(evomerge.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def checked_workdir(recorded: Any) -> str:
    """The recorded working directory, if this user owns it and no one else may write to
    it; otherwise a ConfigError (one sentence)."""
    hint = "resume it from the command line in the directory you trust"
    if not isinstance(recorded, str) or not os.path.isabs(recorded):
        raise ConfigError(f"The study's recorded working directory {recorded!r} is not an "
                          f"absolute path; {hint}.")
    try:
        info = os.stat(recorded)
    except OSError:
        raise ConfigError(f"The study's recorded working directory {recorded!r} does not "
                          f"exist here; {hint}.") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"The study's recorded working directory {recorded!r} is not a "
                          f"directory; {hint}.")
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"The study's recorded working directory {recorded!r} is not yours "
                          f"alone (owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o}); "
                          f"{hint}.")
    return recorded


def code_in_space(space: Any) -> list[str]:
    """What in ``space`` picks code to run: callable evaluators and lm-eval task
    directories (their YAML may call Python with ``!function``)."""
    out = []
    for name, ev in space.evaluators.items():
        options = ev.options()
        test = options.get("test") if isinstance(options.get("test"), dict) else {}
        for opts in (options, {**options, **test}):  # the report's options too
            if ev.type == "callable":
                out.append(f"evaluator {name!r} calls {opts.get('function')!r}")
            if opts.get("include_path"):
                out.append(f"evaluator {name!r} reads lm-eval tasks from "
                           f"{opts['include_path']!r}")
    return list(dict.fromkeys(out))


def _safe_slurm_options(options: dict[str, Any]) -> dict[str, Any]:
    if options.get("head_address") is not None:  # the study would pick the Ray cluster
        raise ConfigError(f"The study's recorded Ray head address "
                          f"{str(options['head_address'])[:80]!r} is not used from the "
                          "dashboard; resume it with `evomerge slurm resume`.")
    extra = [a for a in options.get("sbatch_args") or []  # one word each: SlurmOptions checks
             if not (isinstance(a, str) and a.split("=", 1)[0] in SAFE_SBATCH_OPTIONS)]
    if extra:
        raise ConfigError(f"The study's recorded sbatch option {str(extra[0])[:80]!r} is not "
                          "resubmitted from the dashboard (only resource and accounting "
                          "options are); resume it with `evomerge slurm resume`.")
    return options


def resume_study(study: Any, url: str, results: str | Path) -> dict[str, Any]:
    """Start ``study`` (found in the dashboard's storage ``url``) again, writing under the
    dashboard's ``results`` root; refuses while its driver is alive, and whenever the study
    would pick code to run or a place to run it (module docstring)."""
    record = StudyRecord(study)
    name = check_name(study.study_name, "study name")
    if driver_state(study) == "running":
        raise ConfigError(f"Study {name!r} is running; nothing to resume.")
    space = record.space
    code = code_in_space(space)
    if code:
        raise ConfigError(f"Study {name!r} runs code named in its space ({code[0]}); resume it "
                          f"from the command line if you trust it: evomerge resume {name}")
    sent = ([] if space.tracking is None else
            destinations(space.tracking, Path(results).absolute() / name))
    if sent:
        raise ConfigError(f"Study {name!r} sends its runs to {sent[0]} (its space's "
                          "tracking); resume it from the command line if you mean it: "
                          f"evomerge resume {name}")
    launch = record.launch
    if not isinstance(launch, dict):
        raise ConfigError(f"Study {name!r} has no readable launch record; resume it from the "
                          "command line.")
    if launch.get("via") == "slurm":
        from evomerge.cluster.slurm import SlurmOptions, submit

        try:
            opts = SlurmOptions(**_safe_slurm_options(dict(launch.get("options") or {})))
        except ValidationError as exc:  # the record is data
            raise ConfigError(format_validation_error(exc, "the study's Slurm options")
                              ) from None
        job = submit(None, opts, study=name, storage=url, results=results)
        return {"via": "slurm", "job_id": job.job_id}
    cmd = local_resume_command(study, url, results, launch)
    cwd = checked_workdir(launch.get("cwd"))
    log_dir = Path(results) / name
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / "resume.log", "ab")  # noqa: SIM115 -- handed to the child process
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=log, env=_own_environment(),
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
