"""Item 1: the dashboard's Resume (clicked in Chromium) runs this installation's evomerge,
never code, a directory or a place to write chosen by the study file."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest
from dashboard.conftest import make_stopped_study

from evomerge.dashboard.catalog import Catalog
from evomerge.errors import ConfigError
from evomerge.search.ledger import counted, load_study, open_storage

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_resume_never_imports_an_evomerge_from_the_recorded_directory(browser, mini_zoo,
                                                                      tmp_path):
    """A study copied from someone records a working directory that holds an
    ``evomerge/__main__.py``; a click on Resume (Chromium) runs the installed evomerge."""
    from urllib.parse import urlencode

    from .conftest import dashboard

    url = make_stopped_study(mini_zoo, tmp_path)
    results = tmp_path / "results"
    evil = tmp_path / "shared" / "project"
    (evil / "evomerge").mkdir(parents=True)
    marker = tmp_path / "evil-code-ran"
    for name in ("__init__.py", "__main__.py"):
        (evil / "evomerge" / name).write_text(f"open({str(marker)!r}, 'w').write('1')\n")
    elsewhere = tmp_path / "elsewhere"
    study = load_study(open_storage(url), "dash")
    launch = study.user_attrs["evomerge_launch"]
    study.set_user_attr("evomerge_launch", {**launch, "cwd": str(evil),
                                            "results": str(elsewhere)})

    with dashboard(results) as base:
        page = browser.new_page()
        page.goto(f"{base}/study?" + urlencode({"storage": url, "name": "dash"}))
        page.click("#resume")
        page.wait_for_selector("#msg")
        msg = page.inner_text("#msg")
        page.close()
    assert msg.startswith("Resumed locally (pid "), msg
    try:
        psutil.Process(int(msg.split("pid ")[1].split(",")[0])).wait(timeout=300)
    except psutil.NoSuchProcess:
        pass
    log = (results / "dash" / "resume.log").read_text()
    assert not marker.exists(), log  # the study's directory held code; it never ran
    done = sum(counted(t) for t in load_study(open_storage(url), "dash").get_trials())
    assert done == 12, log  # the installed evomerge resumed the study to its budget
    assert not elsewhere.exists()  # results under the dashboard's --results, not the study's


def test_what_resume_takes_from_a_study_is_checked(tmp_path):
    from evomerge.dashboard.actions import checked_workdir, local_resume_command

    class Study:
        study_name = "dash"

    cmd = local_resume_command(Study(), "sqlite:///x.db", tmp_path, {"workers": 2,
                               "ray_options": {"num_gpus": 0.5, "timeout": 60}})
    assert cmd[:5] == [cmd[0], "-P", "-m", "evomerge", "resume"] and Path(cmd[0]).is_file()
    assert cmd[cmd.index("--results") + 1] == str(tmp_path)
    for launch in ({"workers": "1; rm -rf ~"}, {"workers": 1, "ray_options":
                                                {"num_gpus": "--ray-address=evil:1"}}):
        with pytest.raises(ConfigError, match="is not a number"):
            local_resume_command(Study(), "sqlite:///x.db", tmp_path, launch)
    Study.study_name = "../../x"
    with pytest.raises(ConfigError, match="study name"):
        local_resume_command(Study(), "sqlite:///x.db", tmp_path, {})
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anyone may plant an evomerge/ here
    for bad in (str(shared), "relative/dir", str(tmp_path / "missing")):
        with pytest.raises(ConfigError, match="working directory"):
            checked_workdir(bad)
    own = tmp_path / "own"
    own.mkdir(mode=0o755)
    os.chmod(own, 0o755)
    assert checked_workdir(str(own)) == str(own)


def test_a_study_naming_code_or_unsafe_sbatch_options_is_not_resumed(study_root):
    from evomerge.dashboard.actions import resume_study

    [(url, study)] = Catalog(results=study_root).studies()
    space = dict(study.user_attrs["evomerge_space"])
    launch = dict(study.user_attrs["evomerge_launch"])
    try:
        study.set_user_attr("evomerge_space", {**space, "evaluators": {
            **space["evaluators"], "py": {"type": "callable", "function": "/tmp/x.py:f",
                                          "metrics": {"s": "maximize"}}}})
        with pytest.raises(ConfigError, match="runs code named in its space"):
            resume_study(study, url, study_root)
        study.set_user_attr("evomerge_space", space)
        study.set_user_attr("evomerge_launch", {"via": "slurm", "options": {
            "sbatch_args": ["--export=ALL,LD_PRELOAD=/tmp/evil.so"]}})
        with pytest.raises(ConfigError, match="--export=ALL,LD_PRELOAD"):
            resume_study(study, url, study_root)
        # sbatch reads every word of an #SBATCH line: an allowed option first hid the rest
        study.set_user_attr("evomerge_launch", {"via": "slurm", "options": {
            "sbatch_args": ["--comment=x --export=ALL,LD_PRELOAD=/tmp/evil.so"]}})
        with pytest.raises(ConfigError, match="one --option without spaces"):
            resume_study(study, url, study_root)
        study.set_user_attr("evomerge_launch", {"via": "slurm", "options": {
            "head_address": "203.0.113.7"}})  # the study would pick the Ray cluster
        with pytest.raises(ConfigError, match="Ray head address '203.0.113.7'"):
            resume_study(study, url, study_root)
        # the report's options (an evaluator's `test` block) are checked too
        study.set_user_attr("evomerge_space", {**space, "evaluators": {
            name: {**ev, "test": {"include_path": "/tmp/evil_tasks"}}
            for name, ev in space["evaluators"].items()}})
        with pytest.raises(ConfigError, match="/tmp/evil_tasks"):
            resume_study(study, url, study_root)
        # a tracker the study names would send it elsewhere, or write where it says
        for tracking, words in (({"type": "wandb", "mode": "offline", "dir": "/home/u/.ssh"},
                                 "a place outside its folder"),
                                ({"type": "mlflow", "tracking_uri": "http://203.0.113.7"},
                                 "MLflow at 'http://203.0.113.7'")):
            study.set_user_attr("evomerge_space", {**space, "tracking": tracking})
            with pytest.raises(ConfigError, match=words):
                resume_study(study, url, study_root)
    finally:
        study.set_user_attr("evomerge_space", space)
        study.set_user_attr("evomerge_launch", launch)
