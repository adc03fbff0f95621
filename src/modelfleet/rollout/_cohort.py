"""Sticky hashed cohorts (shared/DESIGN.md §6): which devices a rollout treats at each stage.

``bucket = sha256(salt ‖ device id) mod 10,000``. The lowest ``holdout`` share of
buckets is the concurrent control; the rest are treated in bucket order as
stages widen, so a device treated at stage k stays treated at k+1, and a device
that joins mid-rollout simply falls into its bucket. Devices tagged ``lab=true``
are the hardware-in-the-loop stage 0 and are never part of the comparison.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping

__all__ = ["BUCKETS", "Cohort", "assign", "bucket", "is_lab", "treated_share"]

BUCKETS = 10_000


class Cohort(enum.StrEnum):
    """Where a target device stands in a rollout."""

    HOLDOUT = "holdout"
    """Kept on the baseline version: the concurrent control."""
    TREATED = "treated"
    """Runs the new version."""
    WAITING = "waiting"
    """Not treated yet; a later stage reaches it."""
    LAB = "lab"
    """A hardware-in-the-loop device: treated in stage 0, never compared."""


def bucket(salt: str, device_id: str) -> int:
    """The device's bucket in ``[0, 10,000)``; the same for the life of the rollout."""
    digest = hashlib.sha256(f"{salt}\x00{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def is_lab(tags: Mapping[str, str]) -> bool:
    """Whether the device is a lab (hardware-in-the-loop) device."""
    return tags.get("lab", "").lower() in {"true", "1", "yes"}


def _holdout_buckets(holdout_percent: float) -> int:
    return round(BUCKETS * holdout_percent / 100)


def assign(salt: str, device_id: str, tags: Mapping[str, str], *, holdout_percent: float, percent: float) -> Cohort:
    """The device's cohort when ``percent`` of the non-holdout target is treated (0 before any stage).

    Args:
        salt: the rollout's salt.
        device_id: the device.
        tags: its admin tags (a lab device is always :attr:`Cohort.LAB`).
        holdout_percent: the spec's holdout share of the target, in (0, 100).
        percent: the current stage's treated share of the non-holdout target, in [0, 100].
    """
    if is_lab(tags):
        return Cohort.LAB
    b = bucket(salt, device_id)
    holdout = _holdout_buckets(holdout_percent)
    if b < holdout:
        return Cohort.HOLDOUT
    treated = round((BUCKETS - holdout) * percent / 100)
    return Cohort.TREATED if b - holdout < treated else Cohort.WAITING


def treated_share(holdout_percent: float, percent: float) -> float:
    """Expected share of treated devices among compared (treated + holdout) devices at a stage."""
    holdout = _holdout_buckets(holdout_percent)
    treated = round((BUCKETS - holdout) * percent / 100)
    return treated / (treated + holdout)
