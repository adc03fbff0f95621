"""Train the vibration classifier on chosen sensor conditions, export ONNX, build and sign its bundle.

scikit-learn and skl2onnx (the ``train`` extra) are imported inside :func:`train_sensor_model`.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx

from modelfleet.bundle import BuildOptions, Manifest, SigningKey, ValidationSet, build_bundle
from modelfleet.sim._scenario import TrainingData
from modelfleet.sim._signal import STATES, SensorSignal, sensor_readings
from modelfleet.sim.models import ModelCase

__all__ = ["BuiltVersion", "Readings", "build_version", "sensor_data", "train_sensor_model"]

MODEL = "vibration"
_OPSET = 17
_VALIDATION_SHARE = 0.25
_MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class BuiltVersion:
    """A signed bundle and what was measured while building it."""

    version: str
    path: Path
    manifest: Manifest
    accuracy: float
    parity: float | None
    size: int


def sensor_data(
    training: TrainingData, rng: np.random.Generator
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Readings under every (gain, temperature) combination of ``training``, shuffled."""
    conditions = list(itertools.product(training.gains, training.temperatures))
    per = max(1, training.rows // len(conditions))
    parts = [
        sensor_readings(
            rng, per, SensorSignal(gain=gain, temperature=temperature, temperature_sd=training.temperature_sd)
        )
        for gain, temperature in conditions
    ]
    x = np.vstack([part[0] for part in parts])
    y = np.concatenate([part[1] for part in parts])
    order = rng.permutation(len(y))
    return x[order], y[order]


Readings = tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]


def train_sensor_model(training: TrainingData, path: Path, *, seed: int = 0, data: Readings | None = None) -> ModelCase:
    """Train a scaler + MLP on ``training``'s conditions and write it as ONNX (``X: float32[?, 8]``).

    A quarter of the rows is held out as the bundle's validation set (its reference
    histograms are what the drift monitor compares the field with). ``data`` replaces the
    readings drawn from ``training``'s conditions (field data).
    """
    try:  # the train extra is not installed on devices
        from skl2onnx import to_onnx  # noqa: PLC0415
        from sklearn.exceptions import ConvergenceWarning  # noqa: PLC0415
        from sklearn.neural_network import MLPClassifier  # noqa: PLC0415
        from sklearn.pipeline import make_pipeline  # noqa: PLC0415
        from sklearn.preprocessing import StandardScaler  # noqa: PLC0415
    except ImportError as exc:
        msg = "training the simulator's models needs scikit-learn and skl2onnx: pip install 'modelfleet[train]'"
        raise ImportError(msg) from exc
    rng = np.random.default_rng(seed)
    x, y = sensor_data(training, rng) if data is None else data
    cut = int(len(y) * (1 - _VALIDATION_SHARE))
    classifier = make_pipeline(
        StandardScaler(), MLPClassifier((training.hidden,), alpha=training.alpha, max_iter=800, random_state=seed)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a capped fit is still a working classifier
        classifier.fit(x[:cut], y[:cut])
    model = to_onnx(
        classifier,
        x[:1],
        options={id(classifier.steps[-1][1]): {"zipmap": False}},
        target_opset={"": _OPSET, "ai.onnx.ml": 3},
    )
    onnx.save_model(model, path)
    return ModelCase(
        path=path,
        x_val=np.ascontiguousarray(x[cut:]),
        y_val=y[cut:],
        labels=STATES,
        framework_accuracy=float(classifier.score(x[cut:], y[cut:])),
    )


def build_version(
    version: str,
    release: int,
    training: TrainingData,
    keys: list[SigningKey],
    workdir: Path,
    *,
    parent: str | None = None,
    seed: int = 0,
    data: Readings | None = None,
) -> BuiltVersion:
    """Train, export, (quantize,) build and sign ``vibration`` ``version`` (on ``data`` when given)."""
    workdir.mkdir(parents=True, exist_ok=True)
    case = train_sensor_model(training, workdir / f"{MODEL}-{version}.onnx", seed=seed, data=data)
    options = BuildOptions(
        name=MODEL,
        version=version,
        release=release,
        parent=parent,
        quantize="int8" if training.quantize else "none",
        labels=STATES,
        max_latency_ms=50.0,
        max_ram_bytes=256 * _MB,
        golden_count=4,
        dataset="modelfleet.sim vibration sensor",
        dataset_version="field"
        if data is not None
        else f"gains={list(training.gains)} temps={list(training.temperatures)}",
        builder="modelfleet.sim",
    )
    out = workdir / f"{MODEL}-{version}.mfb"
    validation = ValidationSet(inputs={"X": case.x_val}, labels=case.y_val)
    manifest = build_bundle(case.path, validation, keys, out, options)
    parity = manifest.evidence.parity
    return BuiltVersion(
        version=version,
        path=out,
        manifest=manifest,
        accuracy=float(manifest.evidence.metrics.get("accuracy", float("nan"))),
        parity=parity.agreement if parity is not None else None,
        size=out.stat().st_size,
    )
