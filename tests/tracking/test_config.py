"""Each tracker's options are its own model in a union discriminated by ``type``."""

from __future__ import annotations

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
