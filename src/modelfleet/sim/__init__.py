"""The fleet simulator, its scenarios, and the small real models it, the tests and the demo run.

:func:`run_scenario` plays a scenario (:func:`load_scenario`: shipped by name, or a
YAML file) on a :class:`Fleet` of real agents against a real server over loopback
HTTP, on one simulated clock; :func:`write_report` draws the run. Modules:
``_scenario`` (the file format), ``_signal`` (the simulated vibration sensor),
``_training`` (train, export, sign a version), ``_clock`` (the clock both
processes read), ``_server`` (the server process and the retrain webhook),
``_device`` (one virtual device), ``_fleet`` (rounds),
``_run`` (the operator's timeline), ``_report`` (HTML and SVG).

The model factories need only numpy and onnx; the simulator's names load on
first use (PEP 562), so ``from modelfleet.sim import digits_mlp`` does not import
the server and the agent. scikit-learn and skl2onnx (the ``train`` extra) are
imported when a model is trained.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelfleet._lazy import lazy_exports
from modelfleet.sim.models import ModelCase, digits_mlp, large_matmul, tiny_cnn

if TYPE_CHECKING:
    from modelfleet.sim._fleet import Fleet, Round, VersionRound
    from modelfleet.sim._report import decision_lines, write_report
    from modelfleet.sim._run import Outcome, run_scenario
    from modelfleet.sim._scenario import Scenario, load_scenario, parse_scenario, scenario_names
    from modelfleet.sim._signal import FEATURES, STATES, SensorSignal, sensor_readings

_EXPORTS = {
    "FEATURES": "_signal",
    "STATES": "_signal",
    "Fleet": "_fleet",
    "Outcome": "_run",
    "Round": "_fleet",
    "Scenario": "_scenario",
    "SensorSignal": "_signal",
    "VersionRound": "_fleet",
    "decision_lines": "_report",
    "load_scenario": "_scenario",
    "parse_scenario": "_scenario",
    "run_scenario": "_run",
    "scenario_names": "_scenario",
    "sensor_readings": "_signal",
    "write_report": "_report",
}
"""Public name -> the private module that defines it (loaded on first use)."""

__all__ = [
    "FEATURES",
    "STATES",
    "Fleet",
    "ModelCase",
    "Outcome",
    "Round",
    "Scenario",
    "SensorSignal",
    "VersionRound",
    "decision_lines",
    "digits_mlp",
    "large_matmul",
    "load_scenario",
    "parse_scenario",
    "run_scenario",
    "scenario_names",
    "sensor_readings",
    "tiny_cnn",
    "write_report",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
