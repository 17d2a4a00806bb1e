"""Launch a search on a Slurm cluster: render the job script, submit it, report its state.

    job = submit("search_spaces/zoo_mixed.yaml", SlurmOptions(nodes=2, gpus_per_node=4))

``submit`` validates the space and the models and creates the study *before* anything is
queued (a bad config fails here, not in a job hours later), writes the job script next to the
study (``results/<study>/slurm/job-N.sh``) and runs ``sbatch`` with an argument list (no shell;
every value in the script is shell-quoted). The job starts a Ray head on its first node and
Ray workers on the others, runs ``evomerge resume`` against that cluster and tears Ray down.
It requests requeue and a USR1 signal before its time limit: the driver then stops cleanly
and the job requeues itself, so the requeued job resumes the same study.

The study storage defaults to Optuna's JournalFileStorage on the shared filesystem (SQLite is
not safe on NFS). How the study was launched is kept in the study itself (user attribute
``evomerge_launch``), so ``evomerge slurm status`` and the dashboard's resume button work from
the storage alone.
"""

from __future__ import annotations

import os
import shlex
import shutil
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from evomerge.cluster.slurm_info import ACTIVE_STATES, launch_jobs, refuse_active_jobs
from evomerge.errors import ConfigError, EvomergeError
from evomerge.names import check_name
from evomerge.search.ledger import default_journal, existing_default, storage_file
from evomerge.search.records import StudyRecord

__all__ = ["SlurmOptions", "SlurmJob", "submit", "render_job", "job_state", "slurm_status",
           "journal_storage", "ACTIVE_STATES"]

TEMPLATE = Path(__file__).parent / "templates" / "search.sbatch"


class SlurmOptions(BaseModel):
    """Resources of a search job (``sbatch`` options) and of its Ray actors."""

    model_config = ConfigDict(extra="forbid")

    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    cpus_per_node: int | None = Field(None, ge=1)
    time: str | None = None
    partition: str | None = None
    workers: int | None = Field(None, ge=1, description="Ray actors (default: one per GPU, "
                                "or one per node on CPU)")
    num_gpus: float | None = Field(None, ge=0, description="GPUs per actor")
    num_cpus: float | None = Field(None, gt=0, description="CPUs per actor")
    signal_seconds: int = Field(120, ge=10, description="USR1 this long before the time limit")
    sbatch_args: list[str] = Field(default_factory=list, description="extra sbatch options")
    head_address: str | None = Field(None, description="address of the Ray head (default: the "
                                     "NodeAddr Slurm has for the job's first node)")

    @field_validator("time", "partition", "head_address")
    @classmethod
    def _one_word(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c.isspace() for c in v)):
            raise ValueError(f"must be one word, got {v!r}")
        return v

    @field_validator("sbatch_args")
    @classmethod
    def _options_only(cls, v: list[str]) -> list[str]:
        for arg in v:  # sbatch reads every word of an #SBATCH line as an option of its own
            if not arg.startswith("--") or any(c.isspace() for c in arg):
                raise ValueError(f"each extra sbatch argument must be one --option without "
                                 f"spaces, got {arg!r}")
        return v

    def actors(self) -> int:
        if self.workers is not None:
            return self.workers
        return self.nodes * self.gpus_per_node if self.gpus_per_node else self.nodes


@dataclass(frozen=True)
class SlurmJob:
    job_id: str
    script: Path
    study: str
    storage: str


def journal_storage(study: str, results: str | Path = "results") -> str:
    """The default storage of a Slurm study: a journal file under ``results/<study>/``."""
    return default_journal(study, results)


def _submit_journal(study: str, results: str | Path) -> str:
    """The journal a submit without ``--storage`` uses: :func:`journal_storage`, refused where
    a local search keeps a study of that name in ``results/<study>/study.db`` (the job would
    start a second study beside it, not continue that one)."""
    url = existing_default(study, results)
    if url is not None and not url.startswith("journal:"):
        raise ConfigError(f"Study {study!r} is a local search's, in {storage_file(url)}; a Slurm "
                          f"job keeps its study in {storage_file(journal_storage(study, results))}"
                          f" and would start a second one: pass --storage {url} to continue it "
                          "(the job's first node must reach that file), or choose another "
                          "study name.")
    return journal_storage(study, results)


class _Template(string.Template):
    delimiter = "@@"  # bash owns "$" (and uses "@" in arrays)


def _output_value(log_dir: Path) -> str:
    """``--output``'s value for a log in ``log_dir``: double-quoted (sbatch reads #SBATCH
    lines itself, without a shell, and honours double quotes), with ``%`` doubled (sbatch's
    filename patterns; ``%%`` is a literal one) before the job's own ``%j``. A backslash
    would turn every pattern off, and a quote or line break cannot be carried: refused."""
    text = str(log_dir)
    bad = next((c for c in ('"', "\\", "\n", "\r") if c in text), None)
    if bad is not None:
        raise ConfigError(f"The results path {text!r} contains {bad!r}, which an #SBATCH "
                          "line cannot carry; choose a --results path without it.")
    return '"' + text.replace("%", "%%") + '/slurm-%j.out"'


def _directives(study: str, opts: SlurmOptions, log_dir: Path) -> str:
    lines = [f'--job-name="evomerge-{check_name(study, "study name")}"', f"--nodes={opts.nodes}",
             "--ntasks-per-node=1", f"--output={_output_value(log_dir)}",
             "--open-mode=append", "--requeue", f"--signal=B:USR1@{opts.signal_seconds}"]
    if opts.cpus_per_node:
        lines.append(f"--cpus-per-task={opts.cpus_per_node}")
    if opts.gpus_per_node:
        lines.append(f"--gpus-per-node={opts.gpus_per_node}")
    if opts.time:
        lines.append(f"--time={opts.time}")
    if opts.partition:
        lines.append(f"--partition={opts.partition}")
    lines += opts.sbatch_args
    # sbatch reads "#SBATCH" lines verbatim: no quoting, so reject what could break a line.
    for line in lines:
        if "\n" in line or "\r" in line:
            raise ConfigError(f"sbatch option {line!r} spans lines.")
    return "\n".join(f"#SBATCH {line}" for line in lines)


def render_job(study: str, storage: str, results: str | Path, opts: SlurmOptions,
               python: str | None = None, workdir: str | Path | None = None,
               track: str | None = None) -> str:
    """The job script for ``study`` (every interpolated value shell-quoted); ``track``: the
    ``--track`` value its driver logs to (validated by the caller)."""
    python = python or sys.executable
    ray = Path(python).parent / "ray"
    ray_bin = str(ray) if ray.exists() else (shutil.which("ray") or "ray")
    results = Path(results).resolve()
    actor = []
    num_gpus = opts.num_gpus if opts.num_gpus is not None else (1.0 if opts.gpus_per_node else None)
    if num_gpus is not None:
        actor += ["--num-gpus", f"{num_gpus:g}"]
    if opts.num_cpus is not None:
        actor += ["--num-cpus", f"{opts.num_cpus:g}"]
    q = shlex.quote
    return _Template(TEMPLATE.read_text()).substitute(
        directives=_directives(study, opts, results / study / "slurm"),
        signal_seconds=opts.signal_seconds, workdir=q(str(Path(workdir or os.getcwd()).resolve())),
        python=q(python), ray=q(ray_bin), study=q(study), storage=q(storage),
        results=q(str(results)), workers=opts.actors(), gpus=opts.gpus_per_node,
        head_address=q(opts.head_address or ""),
        actor_options=" ".join(q(a) for a in actor),
        track_option=f"--track {q(track)}" if track else "")


def _sbatch(script: Path) -> str:
    if shutil.which("sbatch") is None:
        raise ConfigError("sbatch was not found on PATH: run `evomerge slurm submit` on a Slurm "
                          "login node (or install slurm-client).")
    proc = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise EvomergeError(f"sbatch refused the job: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip().split(";")[0]


def _prepare_study(space_path: str | None, study: str | None, storage: str | None,
                   results: Path, undo: _Undo) -> tuple[Any, str, str]:
    """Create (from a space) or open the study; returns (study, name, storage URL). What it
    creates is noted in ``undo``."""
    import optuna

    from evomerge.search.chain import pin_sources
    from evomerge.search.genome import genome_of_models
    from evomerge.search.ledger import create_or_load, load_study, open_storage
    from evomerge.search.optimizers import make_optimizer
    from evomerge.search.space import load_space
    from evomerge.search.worker import build_evaluators

    if space_path is None:
        if study is None:
            raise ConfigError("Name the study to resume.")
        name = check_name(study, "study name")
        url = storage or _submit_journal(name, results)
        undo.note(results, name, storage)
        return load_study(open_storage(url), name), name, url
    space = load_space(space_path)
    name = check_name(space.name if study is None else study, "study name")
    url = storage or _submit_journal(name, results)
    undo.note(results, name, storage)
    space = pin_sources(space, url, name, results)  # study:NAME#best, pinned now
    genome = genome_of_models(space)  # the models checked, their depth
    build_evaluators(space)  # a bad evaluator fails here, not in the queued job,
    make_optimizer(space.optimizer, genome, space.objectives)  # and a bad x0 too
    store = open_storage(url)
    undo.created = name not in {s.study_name for s in optuna.get_all_study_summaries(store)}
    undo.study = create_or_load(store, name, space, None, genome.num_layers)
    return undo.study, name, url


class _Undo:
    """What a submit created, removed again when it fails (no sbatch, sbatch refused, an
    active job): the study if it was new, the study file (the default journal or the
    ``--storage`` file) with its side files and the folders it made, the job script; and the
    budget it changed, put back."""

    def __init__(self) -> None:
        self.before: dict[Path, bool] = {}  # path -> existed before the submit
        self.study: Any = None
        self.created = False
        self.trials: tuple[bool, Any] | None = None  # (had a budget, its value)
        self.script: Path | None = None

    def note(self, results: Path, name: str, storage: str | None) -> None:
        paths = [results, results / name, results / name / "slurm"]
        # the study's file (the default journal, or the one --storage names), its lock and
        # SQLite's side files, and the folder it would be made in
        # (only when the file is new: an existing one's side files may be another process's)
        file = storage_file(journal_storage(name, results) if storage is None else storage)
        if file is not None and not os.path.lexists(file):
            paths += [file.parent, file, *(file.with_name(file.name + s)
                                           for s in (".lock", "-wal", "-shm", "-journal"))]
        self.before = {p: os.path.lexists(p) for p in paths}

    def run(self) -> None:
        import optuna

        from evomerge.search.ledger import close_storages

        if self.script is not None:
            self.script.unlink(missing_ok=True)
        if self.study is not None and self.created:
            optuna.delete_study(study_name=self.study.study_name, storage=self.study._storage)
        elif self.study is not None and self.trials is not None and self.trials[0]:
            StudyRecord(self.study).set_budget(self.trials[1])
        close_storages()  # a file this submit made is removed below, its connections first
        for p in sorted(self.before, key=lambda p: len(p.parts), reverse=True):
            if self.before[p]:
                continue
            if p.is_file() or p.is_symlink():
                p.unlink()
            elif p.is_dir() and not any(p.iterdir()):
                p.rmdir()


def submit(space_path: str | None, opts: SlurmOptions, *, study: str | None = None,
           storage: str | None = None, results: str | Path = "results",
           trials: int | None = None, python: str | None = None,
           track: str | None = None) -> SlurmJob:
    """Validate, create the study, write the job script and ``sbatch`` it; ``track``: an
    experiment tracker for the job's driver (``--track``, checked here).

    With ``space_path=None`` the existing ``study`` is resumed by a new job. Refuses while the
    study already has a pending or running job. A submit that fails (no sbatch, sbatch
    refused, a bad space, an active job) leaves nothing behind: a study it created is
    deleted, its job script and the files and folders it made are removed, a budget it
    changed is put back.
    """
    from evomerge.commands import check_trials
    from evomerge.tracking import parse_track

    check_trials(trials)
    if track is not None:
        parse_track(track)  # a bad --track fails here, not in the queued job
    if shutil.which("sbatch") is None:
        raise ConfigError("sbatch was not found on PATH: run `evomerge slurm submit` on a Slurm "
                          "login node (or install slurm-client).")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its "study created" line is noise
    results = Path(results).resolve()
    undo = _Undo()
    try:
        st, name, url = _prepare_study(space_path, study, storage, results, undo)
        undo.study = st
        record = StudyRecord(st)
        if track is None:  # the job's driver confines the space's tracker: refused here first
            from evomerge.commands import run_tracker

            run_tracker(record.space, None, results / name)
        launch = record.launch  # data: launch_jobs reads only a list of job ids from it
        refuse_active_jobs(name, launch, skip_own=False)
        if trials is not None:
            undo.trials = (record.budget is not None, record.budget)
            record.set_budget(trials)
        folder = results / name / "slurm"
        folder.mkdir(parents=True, exist_ok=True)
        script = folder / f"job-{len(list(folder.glob('job-*.sh'))) + 1}.sh"
        text = render_job(name, url, results, opts, python=python, track=track)
        undo.script = script
        script.write_text(text)
        script.chmod(0o755)
        job_id = _sbatch(script)
    except BaseException:
        undo.run()
        raise
    jobs = [*launch_jobs(launch), job_id]
    record.set_launch({
        "via": "slurm", "jobs": jobs, "script": str(script), "results": str(results),
        "storage": url, "options": opts.model_dump(mode="json"), "submitted": time.time()})
    return SlurmJob(job_id, script, name, url)


def job_state(job_id: str) -> dict[str, str]:
    """``scontrol show job`` fields (JobState, Reason, RunTime, Restarts, NodeList, ...);
    ``{"JobState": "UNKNOWN"}`` once Slurm has forgotten the job."""
    from evomerge.cluster.slurm_info import job_fields

    return job_fields(job_id)


def slurm_status(study: str, storage: str | None = None,
                 results: str | Path = "results") -> dict[str, Any]:
    """The study's Slurm jobs and their states, with the study's progress."""
    from evomerge.commands import status

    # the default layout's lookup: opening a journal that does not exist would create it
    info = status(study, storage, str(results))
    info["jobs"] = [{"job_id": j, **{k: v for k, v in job_state(j).items() if k in (
        "JobState", "Reason", "RunTime", "Restarts", "NodeList", "ExitCode")}}
        for j in launch_jobs(info["launch"])]
    return info
