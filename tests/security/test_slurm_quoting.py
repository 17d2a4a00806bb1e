"""Bullets: a Slurm study name is a safe name (no ``--output=...`` smuggled onto an #SBATCH
line), a results path with a space or ``%`` reaches sbatch quoted and escaped (checked on
the local Slurm cluster), and a submit that fails leaves no study, journal or script."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml
from fuzz_inputs import run_cli
from search.spaces import space_dict


def _space(mini_zoo, tmp_path, name="sl") -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space_dict(mini_zoo, name=name, budget={"trials": 2})))
    return path


def _fake_sbatch(tmp_path, script: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\n" + script)
    (bin_dir / "sbatch").chmod(0o755)
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


@pytest.fixture()
def path_env():
    old = os.environ["PATH"]
    yield
    os.environ["PATH"] = old


@pytest.mark.parametrize("study", ["x --output=/tmp/y", "a b", "../up", "%j"])
def test_a_hostile_study_name_is_refused_before_anything_is_written(study, mini_zoo, tmp_path,
                                                                     path_env):
    _fake_sbatch(tmp_path, "echo 1\n")
    results = tmp_path / "results"
    code, err = run_cli(["slurm", "submit", str(_space(mini_zoo, tmp_path)), f"--study={study}",
                         "--results", str(results)])
    assert code == 2 and "study name" in err and "\n" not in err, err
    assert not results.exists()


@pytest.mark.parametrize("storage", [None, "sqlite", "journal"])
@pytest.mark.parametrize("sbatch", ["none", "refuses"])
def test_a_failed_submit_leaves_no_study_or_script(sbatch, storage, mini_zoo, tmp_path,
                                                    path_env):
    if sbatch == "none":
        os.environ["PATH"] = str(tmp_path / "empty")
    else:
        _fake_sbatch(tmp_path, 'echo "sbatch: error: invalid partition specified: gpu" >&2\nexit 1\n')
    results = tmp_path / "results"
    results.mkdir()
    other = tmp_path / "other"  # a --storage file elsewhere: neither it nor its folder stays
    url = {None: [], "sqlite": ["--storage", f"sqlite:///{other}/s.db"],
           "journal": ["--storage", f"journal:///{other}/j.log"]}[storage]
    code, err = run_cli(["slurm", "submit", str(_space(mini_zoo, tmp_path)), "--results",
                         str(results), *url])
    assert code == 2 and "\n" not in err and ("sbatch" in err), err
    assert list(results.iterdir()) == []  # no study folder, journal or job script left
    assert not other.exists()


@pytest.mark.slow
@pytest.mark.e2e
def test_a_results_path_with_space_and_percent_reaches_sbatch_intact(cluster, mini_zoo, tmp_path):
    import subprocess

    from evomerge.cluster.slurm import SlurmOptions, job_state, submit

    results = tmp_path / "my results %j 100%"
    job = submit(str(_space(mini_zoo, tmp_path)), SlurmOptions(cpus_per_node=1, workers=1),
                 results=results)
    log = results / "sl" / "slurm" / f"slurm-{job.job_id}.out"  # %j expanded, the rest literal
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not log.exists():
        time.sleep(0.5)
    subprocess.run(["scancel", job.job_id], check=False)
    assert log.is_file(), (job_state(job.job_id), sorted(str(p) for p in tmp_path.rglob("*")))


@pytest.fixture(scope="module")
def cluster():
    import shutil
    import subprocess

    if shutil.which("sbatch") is None or subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.strip() == "":
        if os.environ.get("EVOMERGE_REQUIRE_SLURM") == "1":
            pytest.fail("Slurm is required here (slurm/local_cluster.sh start)")
        pytest.skip("no Slurm cluster is running")
