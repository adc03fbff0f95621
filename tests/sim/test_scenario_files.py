"""Scenario files: every shipped one loads and ships as package data; a wrong file is refused naming the field."""

import fnmatch
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from modelfleet.errors import BadDataError
from modelfleet.sim import load_scenario, parse_scenario, scenario_names

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"
SHIPPED = [
    "ab-test",
    "aging-sensors",
    "demo",
    "flaky-fleet",
    "good-update",
    "shadow-test",
    "silent-regression",
    "time-slice-test",
]
MINIMAL = {"name": "tiny", "models": {"1.0.0": {}}, "timeline": [{"at": "0m", "push": "1.0.0", "pin": True}]}


def test_every_issue_scenario_is_shipped_and_loads_by_name():
    assert scenario_names() == SHIPPED
    for name in SHIPPED:
        scenario = load_scenario(name)
        assert scenario.name == name
        assert scenario.description, f"{name} says what it shows"
        assert scenario.expect.rollouts or scenario.expect.experiments, f"{name} states its expected outcome"


def test_the_package_data_ships_every_scenario_file():
    patterns = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"]["modelfleet"]
    folder = resources.files("modelfleet.sim") / "scenarios"
    shipped = [f"sim/scenarios/{entry.name}" for entry in folder.iterdir() if entry.is_file()]
    assert len(shipped) == len(SHIPPED)
    assert [name for name in shipped if not any(fnmatch.fnmatch(name, p) for p in patterns)] == []


def test_a_scenario_file_loads_from_a_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nmodels: {1.0.0: {}}\ntimeline: [{at: 5m, push: 1.0.0, pin: true}]\n")
    scenario = load_scenario(path)
    assert scenario.timeline[0].at.total_seconds() == 300
    assert scenario.devices == 100


BAD = {
    "negative share": ({"sites": [{"name": "a", "share": -1}]}, "sites[0].share"),
    "unknown field": ({"fleet_size": 10}, "fleet_size: Extra inputs are not permitted"),
    "push of a version not in models": (
        {"timeline": [{"at": "0m", "push": "9.9.9"}]},
        "timeline[0].push: 9.9.9 is not in models",
    ),
    "both at and when": (
        {"timeline": [{"at": "0m", "when": "retrain", "push": "1.0.0"}]},
        "exactly one of at and when",
    ),
    "a duration that is not one": (
        {"sensor": {"aging": [{"start": "soon", "end": "1h", "loss": 0.1}]}},
        "sensor.aging[0].start",
    ),
    "aging that ends before it starts": (
        {"sensor": {"aging": [{"start": "1h", "end": "30m", "loss": 0.1}]}},
        "sensor.aging[0]",
    ),
    "a power cut at no crash point": ({"power_cuts": {"share": 0.1, "at": "lunch"}}, "power_cuts.at"),
    "a drop rate of one": ({"links": {"drop": 1.0}}, "links.drop"),
}


@pytest.mark.parametrize(("changes", "named"), BAD.values(), ids=BAD.keys())
def test_a_wrong_scenario_is_refused_naming_the_field(changes, named):
    with pytest.raises(BadDataError) as caught:
        parse_scenario({**MINIMAL, **changes}, "scenario tiny")
    assert caught.value.code == "bad_scenario"
    assert named in caught.value.message


def test_a_file_that_is_not_yaml_or_not_shipped_is_refused(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(BadDataError, match=r"broken\.yaml: not YAML"):
        load_scenario(path)
    with pytest.raises(BadDataError, match="no scenario named 'nope'; shipped: ab-test"):
        load_scenario("nope")


def test_modelfleet_sim_refuses_a_wrong_scenario_file_in_one_line(tmp_path):
    path = tmp_path / "wrong.yaml"
    path.write_text("name: wrong\nmodels: {1.0.0: {}}\ntimeline: [{at: 0m, push: 2.0.0}]\n")
    result = subprocess.run(
        [sys.executable, "-m", "modelfleet", "sim", "--scenario", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 1
    assert "timeline[0].push: 2.0.0 is not in models" in result.stderr
    assert "Traceback" not in result.stderr
