"""A real two-node Slurm cluster on this machine (slurm/two_hosts.sh: two network namespaces,
a slurmd in each, one slurmctld): `evomerge slurm submit --nodes 2` starts the Ray head on one
node and a Ray worker on the other, actors run on both, and losing the worker node's Ray
mid-search re-dispatches its candidates with nothing lost.

Needs root, iproute2 and Slurm; skips without them unless EVOMERGE_REQUIRE_SLURM=1 (CI).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import yaml
from optuna.trial import TrialState
from search.spaces import space_dict

from evomerge.cli import main
from evomerge.cluster.slurm import job_state, journal_storage
from evomerge.cluster.slurm_info import node_address
from evomerge.search.ledger import counted, load_study, open_storage

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "slurm" / "two_hosts.sh"
NODES = {"node1": "10.77.0.11", "node2": "10.77.0.12"}


@pytest.fixture(scope="module")
def two_hosts():
    """SLURM_CONF of the two-node cluster, created for these tests and removed after."""
    def missing(reason: str) -> None:
        if os.environ.get("EVOMERGE_REQUIRE_SLURM") == "1":
            pytest.fail(f"the two-node Slurm cluster is required here: {reason}")
        pytest.skip(reason)

    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("slurmd") is None:
        missing("needs root, iproute2 and Slurm (bash slurm/local_cluster.sh install)")
    up = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True)
    if up.returncode != 0:
        missing(f"two_hosts.sh start failed: {up.stderr[-2000:]}")
    conf = up.stdout.strip().splitlines()[-1].split("=", 1)[1]
    yield conf
    subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True)


@pytest.fixture()
def slurm_conf(two_hosts, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", two_hosts)
    return two_hosts


def _space(mini_zoo: Path, tmp_path: Path, name: str, trials: int) -> Path:
    """A space scored by a callable that takes 0.5 s, so both actors are kept busy."""
    (tmp_path / "ev.py").write_text(
        "import time\n"
        "def score(model, tokenizer):\n"
        "    time.sleep(0.5)\n"
        "    return {'w/m': float(model.model.layers[0].mlp.up_proj.weight.abs().mean())}\n")
    doc = space_dict(
        mini_zoo, name=name, budget={"trials": trials}, optimizer={"name": "random", "seed": 0},
        evaluators={"py": {"type": "callable", "function": f"{tmp_path}/ev.py:score",
                           "metrics": {"w/m": "maximize"}}},
        objectives=[{"evaluator": "py", "task": "w", "metric": "m", "direction": "maximize"}])
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _submit(space: Path, results: Path, capsys) -> str:
    assert main(["slurm", "submit", str(space), "--results", str(results), "--nodes", "2",
                 "--cpus-per-node", "2", "--workers", "2"]) == 0
    return capsys.readouterr().out.split("Slurm job ")[1].split()[0]


def _wait(job: str, seconds: float = 400) -> dict:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        info = job_state(job)
        if info["JobState"] in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}:
            return info
        time.sleep(1)
    raise AssertionError(f"job {job} did not finish: {job_state(job)}")


def _study(name: str, results: Path):
    return load_study(open_storage(journal_storage(name, results)), name)


def _check_exact(name: str, results: Path, budget: int) -> list:
    trials = _study(name, results).get_trials(deepcopy=False)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    evaluated = [t for t in trials if counted(t)]
    assert len(evaluated) == budget and all(t.state == TrialState.COMPLETE for t in evaluated)
    return evaluated


def test_node_addresses_come_from_slurm(slurm_conf):
    assert {n: node_address(n) for n in NODES} == NODES


def test_two_node_search_runs_actors_on_both_nodes(slurm_conf, mini_zoo, tmp_path, capsys):
    results = tmp_path / "results"
    job = _submit(_space(mini_zoo, tmp_path, "two", 16), results, capsys)
    info = _wait(job)
    log = (results / "two" / "slurm" / f"slurm-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED", log[-3000:]
    assert info["NodeList"] == "node[1-2]"
    evaluated = _check_exact("two", results, 16)
    where = {t.user_attrs["worker_node"] for t in evaluated}
    assert where == set(NODES.values()), where  # the head's node and the worker's


def _ray_in(ns: str) -> list[psutil.Process]:
    """Ray's processes (raylet, actors …) in one namespace 'host', not its slurmd/stepd."""
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    out = []
    for pid in map(int, pids.split()):
        try:
            p = psutil.Process(pid)
            cmd = " ".join(p.cmdline())
            if ("ray" in cmd or p.name().startswith("ray::")) and "slurm" not in p.name():
                out.append(p)
        except psutil.Error:
            pass
    return out


def test_losing_the_worker_nodes_ray_loses_nothing(slurm_conf, mini_zoo, tmp_path, capsys):
    results = tmp_path / "results"
    budget = 24
    job = _submit(_space(mini_zoo, tmp_path, "twokill", budget), results, capsys)
    end = time.monotonic() + 300
    done, on_node2 = 0, []
    while time.monotonic() < end:
        trials = _study("twokill", results).get_trials(deepcopy=False) if (
            results / "twokill" / "journal.log").exists() else []
        done = sum(counted(t) for t in trials)
        on_node2 = [t for t in trials if t.user_attrs.get("worker_node") == NODES["node2"]]
        if done >= 4 and on_node2:
            break
        time.sleep(0.5)
    assert on_node2 and done < budget, (done, job_state(job))
    victims = _ray_in("evh2")
    assert victims, "no Ray processes found on node2"
    for p in victims:  # the worker node's Ray dies (as when a node is lost)
        p.send_signal(signal.SIGKILL)
    info = _wait(job)
    log = (results / "twokill" / "slurm" / f"slurm-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED", log[-3000:]
    evaluated = _check_exact("twokill", results, budget)
    late = [t for t in evaluated if t.number > max(x.number for x in on_node2)]
    assert late and all(t.user_attrs["worker_node"] == NODES["node1"] for t in late[-4:])
