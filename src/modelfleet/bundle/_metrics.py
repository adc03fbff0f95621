"""Evaluation metrics recorded in a bundle's evidence, measured on the validation set."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["evaluation_metrics", "expected_calibration_error"]


def evaluation_metrics(
    confidence: npt.NDArray[np.float64],
    top1: npt.NDArray[np.int64],
    labels: npt.NDArray[np.int64] | None,
    bins: int,
) -> dict[str, float]:
    """Return ``n_validation`` and ``mean_confidence``, plus ``accuracy`` and ``ece`` when labels exist.

    The label-free numbers are what a device can report without ground truth; the
    labelled ones are what the confidence should be read against.
    """
    metrics = {"n_validation": float(len(confidence)), "mean_confidence": float(confidence.mean())}
    if labels is not None:
        correct = top1 == labels
        metrics["accuracy"] = float(correct.mean())
        metrics["ece"] = expected_calibration_error(confidence, correct, bins)
    return metrics


def expected_calibration_error(confidence: npt.NDArray[np.float64], correct: npt.NDArray[np.bool_], bins: int) -> float:
    """Sum over equal-width confidence bins of ``share of rows * |accuracy - mean confidence|``."""
    index = np.clip((confidence * bins).astype(np.int64), 0, bins - 1)
    hits = np.bincount(index, weights=correct.astype(np.float64), minlength=bins)
    confidence_sum = np.bincount(index, weights=confidence, minlength=bins)
    return float(np.abs(hits - confidence_sum).sum() / len(confidence))
