"""Each tracker's options are its own model in a union discriminated by ``type``."""

from __future__ import annotations

import re

import pytest
from search.spaces import space_dict

from evomerge.errors import ConfigError
from evomerge.search.space import load_space
from evomerge.tracking import TRACKERS, parse_track
from evomerge.tracking.config import MlflowTracking, TrackioTracking, WandbTracking
from evomerge.tracking.registry import TRACKER_CLASSES


@pytest.mark.parametrize("name, kind", [("mlflow", MlflowTracking), ("wandb", WandbTracking),
                                        ("trackio", TrackioTracking)])
def test_a_tracker_name_takes_its_defaults(name, kind):
    cfg = parse_track(name)
    assert type(cfg) is kind and cfg.type == name
    assert TRACKER_CLASSES[name](cfg).kind == name  # every tracker is registered


def test_inline_yaml_is_validated_by_the_chosen_trackers_model():
    cfg = parse_track("{type: mlflow, tracking_uri: 'http://h:5000', experiment: e}")
    assert (cfg.tracking_uri, cfg.experiment, cfg.timeout) == ("http://h:5000", "e", 10.0)
    assert parse_track("{type: wandb, mode: offline}").mode == "offline"


@pytest.mark.parametrize("text, message", [
    ("neptune", "is neither a tracker (mlflow, wandb, trackio)"),
    ("{type: wandb, tracking_uri: x}", "wandb.tracking_uri: Extra inputs are not permitted"),
    ("{type: mlflow, timeout: 0}", "mlflow.timeout: Input should be greater than 0"),
    ("{type: wandb, mode: sometimes}", "wandb.mode"),
    ("{project: p}", "Unable to extract tag using discriminator"),
])
def test_bad_tracking_options_are_one_sentence(text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_track(text)


def test_space_tracking_block_is_a_run_option(tmp_path):
    zoo = tmp_path / "zoo"
    plain = load_space(space_dict(zoo))
    tracked = load_space(space_dict(zoo, tracking={"type": "trackio", "project": "p"}))
    assert tracked.tracking == TrackioTracking(type="trackio", project="p")
    assert tracked.same_search(plain)  # resuming with another tracker is the same search
    with pytest.raises(ConfigError, match="tracking.mlflow.mode"):
        load_space(space_dict(zoo, tracking={"type": "mlflow", "mode": "offline"}))
    assert set(TRACKERS) == set(TRACKER_CLASSES)


@pytest.mark.parametrize("given, kept", [
    ({"type": "mlflow", "tracking_uri": "sqlite:///m.db"},
     {"tracking_uri": "sqlite:////r/t/m.db", "artifact_location": "/r/t/mlartifacts"}),
    ({"type": "mlflow", "tracking_uri": "mlruns"},
     {"tracking_uri": "/r/t/mlruns", "artifact_location": "/r/t/mlartifacts"}),
    ({"type": "mlflow", "tracking_uri": "file:runs"}, {"tracking_uri": "/r/t/runs"}),
    ({"type": "mlflow", "tracking_uri": "http://mlflow.internal:5000"},
     {"tracking_uri": "http://mlflow.internal:5000", "artifact_location": None}),
    ({"type": "mlflow", "tracking_uri": "sqlite:////r/t/m.db"},  # as a study records it
     {"tracking_uri": "sqlite:////r/t/m.db"}),
    ({"type": "wandb", "dir": "wb"}, {"dir": "/r/t/wb"}),
    ({"type": "mlflow", "tracking_uri": "databricks"}, {"tracking_uri": "databricks"}),
    # the trackers' own defaults write in the working directory: the folder instead
    ({"type": "wandb"}, {"dir": "/r/t"}),
    ({"type": "mlflow"}, {"tracking_uri": "sqlite:////r/t/mlflow.db"}),
])
def test_a_trackers_files_stay_in_the_study_folder(given, kept, monkeypatch):
    from evomerge.tracking.config import confine

    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    got = confine(parse_track(str(given)), "/r/t")
    assert {k: getattr(got, k) for k in kept} == kept


@pytest.mark.parametrize("given, field", [
    ({"type": "mlflow", "tracking_uri": "sqlite:////tmp/elsewhere/OUTSIDE.db"}, "tracking_uri"),
    ({"type": "mlflow", "tracking_uri": "file:///etc/mlruns"}, "tracking_uri"),
    ({"type": "mlflow", "tracking_uri": "../x"}, "tracking_uri"),
    ({"type": "mlflow", "artifact_location": "/srv/x"}, "artifact_location"),
    ({"type": "wandb", "dir": "/home/u/.ssh/wb"}, "dir"),
    ({"type": "wandb", "dir": "~/wb"}, "dir"),
])
def test_a_space_picks_no_place_to_write(given, field):
    from evomerge.tracking.config import confine

    with pytest.raises(ConfigError, match=f"tracking.{field} .* is outside the study's folder"):
        confine(parse_track(str(given)), "/r/t")


def test_the_command_line_may_name_any_place_but_a_space_may_not(mini_zoo, tmp_path,
                                                                   monkeypatch):
    """A space whose MLflow store is elsewhere (the probe's sqlite:////tmp/.../OUTSIDE.db) is
    refused before the study exists; a relative one lands in results/<study>/, artifacts
    too (they went to ./mlruns of the working directory)."""
    import yaml
    from fuzz_inputs import run_cli

    monkeypatch.chdir(tmp_path)
    outside = tmp_path / "elsewhere" / "OUTSIDE.db"
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump(space_dict(mini_zoo, budget={"trials": 2}, tracking={
        "type": "mlflow", "tracking_uri": f"sqlite:///{outside}"})))
    code, err = run_cli(["search", str(space), "--results", "r", "-q"])
    assert code == 2 and "is outside the study's folder" in err and "--track" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]
    space.write_text(yaml.safe_dump(space_dict(mini_zoo, budget={"trials": 2}, tracking={
        "type": "mlflow", "tracking_uri": "sqlite:///m.db"})))
    code, err = run_cli(["search", str(space), "--results", "r", "-q"])
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r", "s.yaml"]
    assert (tmp_path / "r" / "t" / "m.db").is_file()
    assert [p.name for p in (tmp_path / "r" / "t" / "mlartifacts").iterdir()]  # logged files
    code, err = run_cli(["resume", "t", "--results", "r", "--trials", "3", "-q"])
    assert code == 0, err
    # the study keeps the tracker as the space wrote it: moved, its folder is the new one;
    # the MLflow store records the old artifact place, so that run is not tracked (a
    # warning) rather than writing there
    (tmp_path / "r").rename(tmp_path / "moved")
    code, err = run_cli(["resume", "t", "--results", "moved", "--trials", "4", "-q"])
    assert code == 0, err
    assert (tmp_path / "moved" / "t" / "m.db").is_file() and not (tmp_path / "r").exists()
    # --track is this run's: a later plain resume does not take its place from the study
    code, err = run_cli(["resume", "t", "--results", "moved", "--trials", "5", "-q",
                         "--track", f"{{type: mlflow, tracking_uri: 'sqlite:///{outside}'}}"])
    assert code == 0 and outside.is_file(), err
    code, err = run_cli(["resume", "t", "--results", "moved", "--trials", "6", "-q"])
    assert code == 0, err


@pytest.mark.parametrize("uri, words", [
    ("sqlite+pysqlite:////tmp/evil1.db", "is neither a server's URL"),  # MLflow reads sqlite
    ("postgresql+psycopg2://attacker.example/db", "is neither a server's URL"),
    ("sqlite:///%2e%2e/%2e%2e/evil5.db", "holds '%', '$' or a backslash"),  # decoded later
    ("$HOME/mlruns", "holds '%', '$' or a backslash"),
    ("c:/../../x", "is neither a server's URL"),  # a drive letter, not a scheme
])
def test_a_store_uri_the_space_cannot_hide_a_place_in(uri, words):
    """A second probe's ways around the folder rule: a driver in the scheme, percent-encoded
    dots, variables, drive letters; each is refused, and the dashboard sees it as outside."""
    from pathlib import Path

    from evomerge.tracking.config import confine, destinations

    config = MlflowTracking(type="mlflow", tracking_uri=uri)
    with pytest.raises(ConfigError, match=re.escape(words)):
        confine(config, Path("/r/t"))
    assert "a place outside its folder" in destinations(config, Path("/r/t"))
