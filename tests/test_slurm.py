"""Slurm launch: the job script, option checks, and real jobs on a single-node Slurm cluster.

The e2e tests use the real thing: `slurm/local_cluster.sh start` (run by `.ci/run`, or here by
the fixture when this user may) sets up munge, slurmctld and slurmd on this machine. Without
Slurm they skip, unless EVOMERGE_REQUIRE_SLURM=1 (CI), where a missing cluster is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import yaml
from optuna.trial import TrialState
from search.spaces import space_dict

from evomerge.cli import main
from evomerge.cluster.slurm import SlurmOptions, job_state, journal_storage, render_job, submit
from evomerge.errors import ConfigError
from evomerge.search.ledger import counted, load_study, open_storage

REPO = Path(__file__).resolve().parents[1]


# ---- the job script -------------------------------------------------------------------------
def test_job_script_quotes_every_value_and_parses(tmp_path):
    name = "study-1.b"  # names are a safe alphabet (tests/security/test_slurm_quoting.py)
    opts = SlurmOptions(nodes=2, gpus_per_node=4, time="01:00:00", partition="gpu",
                        sbatch_args=["--account=proj"])
    root = tmp_path / "it's a dir; rm -rf ~"
    script = render_job(name, "journal:///x y/journal.log", root, opts, python="/opt/py thon")
    path = tmp_path / "job.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    lines = script.splitlines()
    directives = [line for line in lines if line.startswith("#SBATCH")]
    assert "#SBATCH --nodes=2" in directives and "#SBATCH --gpus-per-node=4" in directives
    assert "#SBATCH --signal=B:USR1@120" in directives and "#SBATCH --requeue" in directives
    assert "#SBATCH --account=proj" in directives
    assert lines.index(directives[-1]) < next(i for i, line in enumerate(lines)
                                              if line and not line.startswith("#"))
    assert f"RESULTS='{tmp_path}/it'\"'\"'s a dir; rm -rf ~'" in script
    assert "PY='/opt/py thon'" in script
    assert "--workers \"$WORKERS\"" in script and "WORKERS=8" in script  # one actor per GPU
    assert "--num-gpus 1" in script
    assert "@@{" not in script and "--track" not in script


def test_job_script_passes_the_tracker_to_its_driver(tmp_path):
    track = "{type: mlflow, tracking_uri: 'http://mlflow:5000'}; rm -rf ~"
    script = render_job("s", "journal:///j.log", tmp_path, SlurmOptions(), track=track)
    (tmp_path / "job.sh").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "job.sh")]).returncode == 0
    quoted = "'{type: mlflow, tracking_uri: '\"'\"'http://mlflow:5000'\"'\"'}; rm -rf ~'"
    assert f"--track {quoted} -q &" in script


@pytest.mark.parametrize(("field", "value"), [
    ("nodes", 0),
    ("time", "1 day"),
    ("sbatch_args", ["--x\n#SBATCH --y"]),
    ("sbatch_args", ["rm"]),
])
def test_bad_options_are_refused(field, value):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=field):
        SlurmOptions(**{field: value})


def test_bad_option_on_the_cli_is_one_sentence(capsys, tmp_path):
    assert main(["slurm", "submit", str(tmp_path / "none.yaml"), "--nodes", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nodes" in err and "0" in err


def test_submit_without_sbatch_is_a_clear_error(mini_zoo, tmp_path, monkeypatch):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space_dict(mini_zoo)))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="sbatch was not found"):
        submit(str(path), SlurmOptions(), results=tmp_path / "results")


def test_bad_space_fails_before_anything_is_queued(tmp_path, capsys):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "base_model": str(tmp_path / "missing")}))
    assert main(["slurm", "submit", str(path), "--results", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*.sh"))


# ---- a real cluster -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster() -> None:
    def missing(reason: str) -> None:
        if os.environ.get("EVOMERGE_REQUIRE_SLURM") == "1":
            pytest.fail(f"Slurm is required here: {reason}")
        pytest.skip(reason)

    if shutil.which("sbatch") is None:
        missing("Slurm is not installed (bash slurm/local_cluster.sh install)")
    up = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if up.returncode != 0 or not up.stdout.strip():
        if os.geteuid() != 0:
            missing("no Slurm cluster is running and starting one needs root")
        subprocess.run(["bash", str(REPO / "slurm" / "local_cluster.sh"), "start"], check=True)


def _space(mini_zoo: Path, tmp_path: Path, name: str, trials: int) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space_dict(mini_zoo, name=name, budget={"trials": trials})))
    return path


def _wait(job: str, states: set[str], seconds: float = 300) -> dict:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        info = job_state(job)
        if info["JobState"] in states:
            return info
        time.sleep(1)
    raise AssertionError(f"job {job} did not reach {states}: {job_state(job)}")


def _study(name: str, results: Path, url: str | None = None):
    return load_study(open_storage(url or journal_storage(name, results)), name)


def _running(text: str) -> bool:
    """Whether a process whose command line holds ``text`` is running."""
    return any(text in " ".join(p.info["cmdline"] or [])
               for p in psutil.process_iter(["cmdline"]))


def _no_ray_left(job: str) -> bool:
    return not _running(f"evomerge-ray-{job}")


@pytest.mark.slow
@pytest.mark.e2e
def test_submitted_search_completes_on_slurm(cluster, mini_zoo, tmp_path, capsys):
    results = tmp_path / "results"
    space = _space(mini_zoo, tmp_path, "slurm_small", 12)
    assert main(["slurm", "submit", str(space), "--results", str(results), "--cpus-per-node", "2",
                 "--workers", "1"]) == 0
    job = capsys.readouterr().out.split("Slurm job ")[1].split()[0]
    info = _wait(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"})
    log = (results / "slurm_small" / "slurm" / f"slurm-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED", log[-3000:]
    study = _study("slurm_small", results)
    trials = study.get_trials(deepcopy=False)
    assert sum(counted(t) for t in trials) == 12
    assert all(t.state == TrialState.COMPLETE for t in trials if counted(t))
    assert study.user_attrs["evomerge_launch"]["jobs"] == [job]
    assert study.user_attrs["evomerge_driver"]["state"] == "budget"
    assert (results / "slurm_small" / "pareto.json").is_file()
    assert main(["slurm", "status", "slurm_small", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "COMPLETED" in out and "12/12 evaluations" in out
    assert _no_ray_left(job)
    # the dashboard's Resume submits a new job for a Slurm study (with the recorded options)
    from evomerge.dashboard.catalog import Catalog
    from evomerge.dashboard.server import create_app

    app = create_app(Catalog(results=results))
    url = journal_storage("slurm_small", results)
    r = app.test_client().post("/resume", data={"storage": url, "name": "slurm_small",
                                                "csrf": app.config["CSRF_TOKEN"]})
    from urllib.parse import parse_qs, urlsplit

    msg = parse_qs(urlsplit(r.headers["Location"]).query)["msg"][0]
    assert msg.startswith("Submitted Slurm job "), msg
    second = msg.split()[-1].rstrip(".")
    assert _wait(second, {"COMPLETED", "FAILED", "CANCELLED"})["JobState"] == "COMPLETED"
    assert _study("slurm_small", results).user_attrs["evomerge_launch"]["jobs"] == [job, second]
    # a second job for a finished study is allowed; one for a queued study is refused
    with pytest.raises(ConfigError, match="already has Slurm job"):
        from evomerge.cluster.slurm import ACTIVE_STATES
        ACTIVE_STATES.add("COMPLETED")
        try:
            submit(None, SlurmOptions(), study="slurm_small", results=results)
        finally:
            ACTIVE_STATES.discard("COMPLETED")


@pytest.mark.slow
@pytest.mark.e2e
def test_preempted_job_requeues_and_finishes_the_budget(cluster, mini_zoo, tmp_path):
    results = tmp_path / "results"
    budget = 150
    job = submit(str(_space(mini_zoo, tmp_path, "slurm_preempt", budget)),
                 SlurmOptions(cpus_per_node=2, workers=1), results=results).job_id
    _wait(job, {"RUNNING"}, 60)
    end = time.monotonic() + 240
    while time.monotonic() < end:  # part-way: some evaluations done, most still to do
        done = sum(counted(t) for t in _study("slurm_preempt", results).get_trials(deepcopy=False))
        if done >= 10:
            break
        time.sleep(0.5)
    # what Slurm sends before a time limit or a preemption (#SBATCH --signal=B:USR1@...)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    info = _wait(job, {"PENDING", "COMPLETED", "FAILED"}, 120)
    assert info["JobState"] == "PENDING" and info["Restarts"] == "1", info
    stopped_at = sum(counted(t) for t in _study("slurm_preempt", results).get_trials(deepcopy=False))
    assert 10 <= stopped_at < budget
    # A requeued job waits ~2 minutes before it may start again; release it sooner, but not
    # before its first run is cleaned up on the node (else: "Job credential revoked"): no
    # step daemon or Ray process of the job left, then the margin that sufficed before.
    end = time.monotonic() + 90
    while time.monotonic() < end and (not _no_ray_left(job) or _running(f"slurmstepd: [{job}.")):
        time.sleep(0.5)
    time.sleep(8)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    info = _wait(job, {"COMPLETED", "FAILED", "CANCELLED"})
    log = (results / "slurm_preempt" / "slurm" / f"slurm-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED", log[-3000:]
    assert "requeueing job" in log and "(restart 1)" in log
    trials = _study("slurm_preempt", results).get_trials(deepcopy=False)
    evaluations = [t for t in trials if counted(t)]
    assert len(evaluations) == budget  # nothing lost, no overshoot
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    hashes = [t.user_attrs["recipe_hash"] for t in evaluations]
    assert len(set(hashes)) == len(hashes)  # no candidate evaluated twice
    assert _no_ray_left(job)


def test_a_bad_tracker_is_refused_before_the_study_is_made(tmp_path, capsys):
    from evomerge.cli import main

    assert main(["slurm", "submit", str(tmp_path / "space.yaml"), "--results", str(tmp_path),
                 "--track", "neptune"]) == 2
    assert "--track 'neptune' is neither a tracker" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_bad_cma_start_is_refused_before_the_study_is_made(mini_zoo, tmp_path, capsys,
                                                             monkeypatch):
    """The optimizer is built against the genome before the journal is opened (optimizer.x0
    naming no gene of this space): exit 2, one sentence, nothing written."""
    fake = tmp_path / "bin"  # an sbatch to find (never run), where Slurm is not installed
    fake.mkdir()
    (fake / "sbatch").write_text("#!/bin/sh\nexit 1\n")
    (fake / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space_dict(mini_zoo, optimizer={
        "name": "cma", "x0": {"nope": 0.5}})))
    assert main(["slurm", "submit", str(path), "--results", str(tmp_path / "r")]) == 2
    assert "optimizer.x0 names gene 'nope', which this space's genome lacks" in \
        capsys.readouterr().err
    assert not (tmp_path / "r").exists() or list((tmp_path / "r").rglob("*")) == []


def test_a_local_study_is_not_started_again_in_a_journal(mini_zoo, tmp_path, capsys):
    """A study a local search keeps in ``results/NAME/study.db`` is not submitted into a new
    ``journal.log`` beside it (two studies under one name): exit 2 before sbatch runs, one
    sentence naming both files, nothing written. ``slurm status`` reads it (or refuses an
    unknown name) without creating a journal either."""
    from evomerge.search.driver import run_search
    from evomerge.search.space import load_space

    results = tmp_path / "r"
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space_dict(mini_zoo, budget={"trials": 2})))
    run_search(load_space(str(path)), results_root=results)
    def files():  # SQLite's -wal and -shm come and go with its connections
        return sorted(p.relative_to(results) for p in results.rglob("*")
                      if not p.name.endswith(("-wal", "-shm")))

    before = files()
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text(f"#!/bin/sh\ntouch {tmp_path}/sbatch-ran\nexit 1\n")
    (fake / "sbatch").chmod(0o755)
    env_path = os.environ["PATH"]
    try:
        os.environ["PATH"] = f"{fake}:{env_path}"
        for args in (["submit", str(path)], ["resume", "t"]):
            assert main(["slurm", *args, "--results", str(results)]) == 2
            err = capsys.readouterr().err
            assert (f"Study 't' is a local search's, in {results}/t/study.db; a Slurm job keeps "
                    f"its study in {results}/t/journal.log and would start a second one: pass "
                    f"--storage sqlite:///{results}/t/study.db to continue it") in err
    finally:
        os.environ["PATH"] = env_path
    assert main(["slurm", "status", "t", "--results", str(results)]) == 0
    assert "2/2 evaluations" in capsys.readouterr().out
    assert main(["slurm", "status", "nope", "--results", str(results)]) == 2
    assert "No study 'nope'" in capsys.readouterr().err
    assert files() == before
    assert not (tmp_path / "sbatch-ran").exists()


def test_a_study_with_a_queued_job_is_not_driven_here_too(mini_zoo, tmp_path, capsys,
                                                           monkeypatch):
    """While a study's Slurm job is queued or running, `evomerge search` / `resume` here is
    refused (the job would start on a study another driver holds, or the two would take turns
    on one budget): exit 2, one sentence naming the job, the study unchanged. The job's own
    driver (``SLURM_JOB_ID``) and a study whose jobs have ended are let through."""
    from evomerge.search.driver import run_search
    from evomerge.search.records import StudyRecord
    from evomerge.search.space import load_space

    results = tmp_path / "r"
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space_dict(mini_zoo, budget={"trials": 2})))
    run_search(load_space(str(path)), results_root=results)
    url = f"sqlite:///{results}/t/study.db"
    launch = {"via": "slurm", "jobs": ["4241", "4242"], "storage": url}
    StudyRecord(_study("t", results, url)).set_launch(launch)
    fake = tmp_path / "bin"
    fake.mkdir()
    state = tmp_path / "state"
    # `scontrol --json` fails (an old Slurm), so the text form is read: job 4242 in `state`
    (fake / "scontrol").write_text(
        '#!/bin/sh\n[ "$1" = --json ] && exit 1\n'
        f'[ "$4" = 4242 ] && echo "JobId=4242 JobName=evomerge-t JobState=$(cat {state}) '
        'Reason=Priority" && exit 0\necho "JobId=$4 JobState=COMPLETED Reason=None"\n')
    (fake / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    state.write_text("PENDING")

    def trials():
        study = _study("t", results, url)
        return len(study.get_trials(deepcopy=False)), StudyRecord(study).budget

    before = trials()
    for args in (["search", str(path), "--trials", "4"], ["resume", "t", "--trials", "4"]):
        assert main([*args, "--results", str(results)]) == 2
        assert ("Study 't' already has Slurm job 4242 (PENDING); wait for it or "
                "`scancel 4242` first.") in capsys.readouterr().err
    assert trials() == before == (2, 2)
    assert StudyRecord(_study("t", results, url)).launch == launch
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # the job's own driver
    assert main(["resume", "t", "--results", str(results), "--trials", "3"]) == 0
    assert trials() == (3, 3)
    monkeypatch.delenv("SLURM_JOB_ID")
    state.write_text("COMPLETED")
    assert main(["resume", "t", "--results", str(results), "--trials", "4"]) == 0
    assert trials() == (4, 4)
