"""Real Ray on this machine: 2 actors, a killed actor, a raising candidate, clean shutdown."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest
from optuna.trial import TrialState

from evomerge.search.driver import run_search
from evomerge.search.ledger import counted, default_storage, load_study, open_storage
from evomerge.search.ray_executor import RayExecutor
from evomerge.search.space import load_space

from .spaces import space_dict

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(autouse=True)
def _no_auth(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")


def _ray_processes(temp_dir: str) -> list[psutil.Process]:
    """This test's Ray processes, not any Ray on the machine: those whose command line names
    the temp dir its executor started Ray with (raylet, GCS …) and their descendants (the
    actors, whose titles Ray rewrites to ``ray::…``)."""
    out: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            if temp_dir in " ".join(p.info["cmdline"] or []):
                out[p.pid] = p
                out.update((c.pid, c) for c in p.children(recursive=True))
        except psutil.Error:
            pass
    return list(out.values())


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _left_behind(temp_dir: str, pids: list[int], within: float = 30.0) -> list:
    """Ray's processes of ``temp_dir`` and ``pids`` still alive after up to ``within`` s: the
    actors exit on their own once their raylet is gone, so this polls rather than sleeps."""
    deadline = time.monotonic() + within
    while True:
        left = [p.pid for p in _ray_processes(temp_dir)] + _alive(pids)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def _study(root, name="t"):
    return load_study(open_storage(default_storage(name, root)), name)


def _callable_space(mini_zoo, tmp_path, code: str, **over):
    """A space scored by ``score`` in ``code`` (metric ``w/m``, maximized)."""
    (tmp_path / "ev.py").write_text(code)
    return load_space(space_dict(
        mini_zoo, evaluators={"py": {"type": "callable", "function": f"{tmp_path}/ev.py:score",
                                     "metrics": {"w/m": "maximize"}}},
        objectives=[{"evaluator": "py", "task": "w", "metric": "m", "direction": "maximize"}],
        **over))


def test_two_actors_kill_one_and_a_raising_candidate(mini_zoo, tmp_path):
    space = _callable_space(
        mini_zoo, tmp_path,
        "import time\n"
        "def score(model, tokenizer, delay=0.3):\n"
        "    time.sleep(delay)\n"
        "    w = float(model.model.layers[0].mlp.up_proj.weight.abs().mean())\n"
        "    if w > 0.0 and round(w * 1e6) % 5 == 0:\n"
        "        raise ValueError('unlucky candidate')\n"
        "    return {'w/m': w}\n",
        budget={"trials": 16}, optimizer={"name": "random", "seed": 3})
    killed: list[int] = []
    holder: dict = {}

    def factory(s):
        holder["ex"] = RayExecutor(s, workers=2, max_retries=2,
                                   temp_dir=tmp_path / "ray")
        return holder["ex"]

    seen: list = []

    def progress(info):  # after the 4th result, kill one actor's process (like the OOM killer)
        if info["done"] == 4 and not killed:
            seen.extend(p.pid for p in _ray_processes(holder["ex"].temp_dir))
            pid = holder["ex"].actor_pids()[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    out = run_search(space, executor_factory=factory, results_root=tmp_path / "r",
                     progress=progress)
    assert killed and out.evaluations == 16
    trials = _study(tmp_path / "r").get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    evaluated = [t for t in trials if counted(t)]
    assert len(evaluated) == 16
    for t in evaluated:
        assert t.state == TrialState.COMPLETE or t.user_attrs["fail_reason"]
    raised = [t for t in evaluated if t.state == TrialState.FAIL]
    assert raised and all("ValueError: unlucky candidate" in t.user_attrs["fail_reason"]
                          for t in raised)
    assert holder["ex"].replaced >= 1
    assert killed[0] in seen  # the finder sees this test's actors (so "none left" means it)
    assert len(seen) >= 3  # raylet, GCS and the actors
    assert _left_behind(holder["ex"].temp_dir, seen) == []


def test_async_scheduling_keeps_both_actors_busy(mini_zoo, tmp_path):
    space = _callable_space(
        mini_zoo, tmp_path,
        "import os, time\n"
        f"LOG = {str(tmp_path / 'spans.txt')!r}\n"
        "def score(model, tokenizer):\n"
        "    t0 = time.time()\n"
        "    time.sleep(1.5)\n"  # long beside materializing, which a loaded machine slows
        "    with open(LOG, 'a') as fh:\n"
        "        fh.write(f'{os.getpid()} {t0} {time.time()}\\n')\n"
        "    return {'w/m': float(model.model.layers[0].mlp.up_proj.weight.abs().mean())}\n",
        budget={"trials": 8}, optimizer={"name": "tpe", "seed": 0})
    holder: dict = {}

    def factory(s):
        holder["ex"] = RayExecutor(s, workers=2, temp_dir=tmp_path / "ray")
        return holder["ex"]

    out = run_search(space, executor_factory=factory, results_root=tmp_path / "r")
    assert out.evaluations == 8
    assert holder["ex"].stats()["utilisation"] > 0.6
    spans = [line.split() for line in (tmp_path / "spans.txt").read_text().splitlines()]
    assert len(spans) == 8 and len({pid for pid, *_ in spans}) == 2  # both actors scored
    iv = [(pid, float(a), float(b)) for pid, a, b in spans]
    # from the moment both actors score: on a loaded machine one actor loads its sources
    # seconds after the other, and the first alone is not a scheduling fault
    up = max(min(a for p, a, _ in iv if p == pid) for pid, *_ in iv)
    busy = sum(b - a for _, a, b in iv if a >= up)
    both = sum(max(0.0, min(b1, b2) - max(a1, a2))  # time two actors scored at once
               for i, (p1, a1, b1) in enumerate(iv) for p2, a2, b2 in iv[i + 1:] if p1 != p2)
    assert both > 0.25 * busy, (both, busy)  # one after another, this is 0


def test_timeout_fails_the_candidate_and_replaces_the_actor(mini_zoo, tmp_path):
    space = _callable_space(
        mini_zoo, tmp_path,
        "import time\n"
        "def score(model, tokenizer):\n"
        "    time.sleep(30)\n"
        "    return {'w/m': 0.0}\n",
        budget={"trials": 2}, optimizer={"name": "random", "seed": 0})
    out = run_search(space, results_root=tmp_path / "r",
                     executor_factory=lambda s: RayExecutor(s, workers=2, timeout=2.0,
                                                            temp_dir=tmp_path / "ray"))
    assert (out.evaluations, out.failed) == (2, 2)
    reasons = [t.user_attrs["fail_reason"] for t in _study(tmp_path / "r").get_trials()]
    assert all("timed out after 2 s" in r for r in reasons)


def test_sigterm_stops_cleanly_and_leaves_no_running_trial(mini_zoo, tmp_path):
    space = load_space(space_dict(mini_zoo, budget={"trials": 200},
                                  optimizer={"name": "random", "seed": 0}))

    temp: dict = {}

    def factory(s):
        ex = RayExecutor(s, workers=2, temp_dir=tmp_path / "ray")
        temp["dir"] = ex.temp_dir
        return ex

    def progress(info):  # Slurm's signal before the time limit, mid-search
        if info["done"] == 3:
            temp["seen"] = [p.pid for p in _ray_processes(temp["dir"])]
            threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGTERM)).start()

    out = run_search(space, results_root=tmp_path / "r", progress=progress,
                     executor_factory=factory)
    assert out.stopped == "interrupted" and 3 <= out.evaluations < 20
    trials = _study(tmp_path / "r").get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert len(temp["seen"]) >= 4  # raylet, GCS, 2 actors: the finder sees this test's Ray
    assert _left_behind(temp["dir"], temp["seen"]) == []


def test_fidelity_rungs_reach_the_actors(mini_zoo, tmp_path):
    """Each rung's examples travel to the actors: rung 0 scores 4 examples of the task, rung
    1 the other 12 (a dropped job would score all 16 each time)."""
    space = load_space(space_dict(
        mini_zoo, objectives=space_dict(mini_zoo)["objectives"][:1], budget={"trials": 8},
        fidelity={"rungs": [0.25, 1.0], "eta": 2}, optimizer={"name": "random", "seed": 0}))
    out = run_search(space, results_root=tmp_path / "r",
                     executor_factory=lambda s: RayExecutor(s, workers=2,
                                                            temp_dir=tmp_path / "ray"))
    assert out.evaluations == 8
    trials = [t for t in _study(tmp_path / "r").get_trials() if counted(t)]
    for t in trials:
        assert [r["examples"] for r in t.user_attrs["rungs"]] == [4, 12][:len(t.user_attrs["rungs"])]
        assert t.user_attrs["worker_node"]
    assert {len(t.user_attrs["rungs"]) for t in trials} == {1, 2}  # some pruned, some not
