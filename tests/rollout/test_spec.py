"""The rollout spec: what it accepts, and refusals that name the field."""

from datetime import timedelta

import pytest

from modelfleet.errors import BadDataError
from modelfleet.rollout import load_spec, parse_duration, parse_spec

GOOD = {
    "model": "digits",
    "version": "2.0.0",
    "selector": {"region": "eu"},
    "stages": [{"percent": 10, "min_duration": "30m"}, {"percent": 100, "approval": "admin"}],
    "gates": [{"metric": "mean_confidence", "margin": 0.02}, {"metric": "error_rate", "margin": 0.01}],
}


def with_(**changes):
    return {**GOOD, **changes}


REFUSED = {
    "stages must widen": (with_(stages=[{"percent": 50}, {"percent": 50}, {"percent": 100}]), "stages[1].percent"),
    "the last stage reaches 100": (with_(stages=[{"percent": 50}]), "must reach 100"),
    "unknown metric": (with_(gates=[{"metric": "vibes", "margin": 1}]), "gates[0].metric"),
    "negative margin": (with_(gates=[{"metric": "error_rate", "margin": -1}]), "gates[0].margin"),
    "a metric twice": (with_(gates=[{"metric": "error_rate", "margin": 1}] * 2), "each metric at most once"),
    "unknown field": (with_(colour="blue"), "colour"),
    "bad duration": (with_(stages=[{"percent": 100, "min_duration": "soon"}]), "stages[0].min_duration"),
    "holdout of 0": (with_(holdout_percent=0), "holdout_percent"),
    "alpha too large": (with_(alpha=0.7), "alpha"),
    "unknown approver": (with_(stages=[{"percent": 100, "approval": "intern"}]), "stages[0].approval"),
    "no gates": (with_(gates=[]), "gates"),
}


@pytest.mark.parametrize(("data", "names"), REFUSED.values(), ids=REFUSED.keys())
def test_a_wrong_spec_is_refused_naming_the_field(data, names):
    with pytest.raises(BadDataError) as caught:
        parse_spec(data)
    assert caught.value.code == "bad_rollout_spec"
    assert names in str(caught.value)


def test_defaults_are_conservative():
    spec = parse_spec(GOOD)
    assert spec.alpha == 0.01
    assert spec.on_failure == "rollback"
    assert spec.stages[0].min_duration == timedelta(minutes=30)
    assert spec.gates[0].oriented == "higher_is_better"
    assert spec.gates[1].oriented == "lower_is_better"


def test_alpha_is_split_over_every_gate_of_every_stage():
    spec = parse_spec(GOOD)
    assert spec.gate_alpha() == pytest.approx(0.01 / 4)


DURATIONS = {"90s": 90, "30m": 1800, "2h": 7200, "1.5d": 129_600, 45: 45, "0s": 0}


@pytest.mark.parametrize(("text", "seconds"), DURATIONS.items())
def test_durations(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


BAD_DURATIONS = ["", "5", "5 years", "-3m", "91d", True, 5.85e16, 1e308, "99999999999999999999d", float("nan")]


@pytest.mark.parametrize("text", BAD_DURATIONS)
def test_bad_durations(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_yaml_and_json_files_load_the_same_spec(tmp_path):
    yaml_file = tmp_path / "r.yaml"
    yaml_file.write_text(
        "model: digits\nversion: 2.0.0\nselector: {region: eu}\nstages:\n"
        "  - {percent: 10, min_duration: 30m}\n  - {percent: 100, approval: admin}\n"
        "gates:\n  - {metric: mean_confidence, margin: 0.02}\n  - {metric: error_rate, margin: 0.01}\n"
    )
    json_file = tmp_path / "r.json"
    json_file.write_text(parse_spec(GOOD).model_dump_json())
    assert load_spec(yaml_file) == load_spec(json_file) == parse_spec(GOOD)


def test_an_unreadable_file_is_refused_with_its_path(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed")
    with pytest.raises(BadDataError, match=r"broken\.yaml"):
        load_spec(broken)
