"""A synthetic vibration sensor: the input stream of the simulator and the demo, with ground truth.

A machine-health classifier on a vibration sensor reads eight features per
second of signal: ``rms``, ``peak``, the energy in the 1x, 2x and 3x running-speed
bands and at high frequency, ``kurtosis`` and ``temperature``. Four machine states
(``normal``, ``imbalance``, ``misalignment``, ``bearing_wear``) shift those
features in known ways (imbalance raises 1x, misalignment 2x and 3x, bearing
wear the high band, the peaks and kurtosis). Each reading is the state's mean
times log-normal noise.

What drifts in the field (every part of it is a parameter, nothing is hidden):

- ``gain``: the sensor's sensitivity. Piezo sensors lose sensitivity as they
  age, so every amplitude feature (the first six) shrinks by the same factor;
  kurtosis (scale-free) and temperature do not.
- ``temperature``: an offset in degrees (a hot site, summer).

The labels are the true machine states, so a simulated device knows ground truth
and true accuracy can be compared with what the label-free telemetry estimates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["AMPLITUDE_FEATURES", "FEATURES", "STATES", "SensorSignal", "sensor_readings"]

FEATURES = ("rms", "peak", "band_1x", "band_2x", "band_3x", "band_hf", "kurtosis", "temperature")
"""The eight input features, in column order."""
STATES = ("normal", "imbalance", "misalignment", "bearing_wear")
"""The four machine states (class labels), in class-index order."""
AMPLITUDE_FEATURES = 6
"""The first six features are amplitudes: they scale with the sensor's gain."""

_MEANS = np.array(
    [
        # rms, peak, 1x, 2x, 3x, hf, kurtosis, temperature
        [1.00, 2.8, 0.60, 0.20, 0.10, 0.10, 3.0, 40.0],  # normal
        [1.45, 3.9, 1.20, 0.25, 0.10, 0.12, 3.0, 42.0],  # imbalance
        [1.35, 3.7, 0.75, 0.70, 0.35, 0.13, 3.2, 43.0],  # misalignment
        [1.25, 4.8, 0.62, 0.24, 0.14, 0.55, 5.0, 46.0],  # bearing_wear
    ],
    dtype=np.float64,
)
_SPREAD = np.array([0.22, 0.22, 0.30, 0.35, 0.40, 0.40, 0.15, 0.0])  # log-normal sigma per feature
_PRIOR = np.array([0.55, 0.15, 0.15, 0.15])


@dataclass(frozen=True, slots=True)
class SensorSignal:
    """How one device's sensor reads right now.

    Attributes:
        gain: sensitivity relative to a new sensor (1.0); multiplies every amplitude feature.
        temperature: degrees added to the temperature reading.
        noise: extra log-normal noise (sigma) on every amplitude feature, e.g. a loose mount.
        temperature_sd: spread of the temperature around the state's mean (a climate-controlled lab
            reads tighter than a factory floor).
    """

    gain: float = 1.0
    temperature: float = 0.0
    noise: float = 0.0
    temperature_sd: float = 3.0


def sensor_readings(
    rng: np.random.Generator, rows: int, signal: SensorSignal = SensorSignal()
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Draw ``rows`` readings and their true machine states under ``signal``."""
    states = rng.choice(len(STATES), size=rows, p=_PRIOR)
    means = _MEANS[states]
    sigma = np.sqrt(_SPREAD**2 + np.r_[np.full(AMPLITUDE_FEATURES, signal.noise**2), 0.0, 0.0])
    x = means * np.exp(rng.standard_normal(means.shape) * sigma)
    x[:, :AMPLITUDE_FEATURES] *= signal.gain
    x[:, -1] = means[:, -1] + rng.standard_normal(rows) * signal.temperature_sd + signal.temperature
    return x.astype(np.float32), states.astype(np.int64)
