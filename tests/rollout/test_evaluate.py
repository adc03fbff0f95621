"""Device values for a stage: exposure on the stage's calendar windows, after installs settle."""

from datetime import UTC, datetime, timedelta

from modelfleet.rollout import Cohort, device_values, parse_spec
from modelfleet.store import DeviceWindow

T0 = datetime(2026, 12, 1, tzinfo=UTC)
SPEC = parse_spec({
    "model": "m", "version": "2.0.0", "exposure_windows": 2, "settle_windows": 1,
    "stages": [{"percent": 100}], "gates": [{"metric": "mean_confidence", "margin": 0.1}],
})  # fmt: skip


def window(device, version, k, confidence=0.9):
    return DeviceWindow(
        device_id=device, version=version, window_start=T0 + timedelta(seconds=300 * k), window_seconds=300, n=10,
        errors=0, fallbacks=0, timeouts=0, n_labelled=0, n_correct=0, n_scored=10, confidence_sum=10 * confidence,
        latency_sum_ms=10.0,
    )  # fmt: skip


def test_both_arms_complete_on_the_same_windows_though_canaries_installed_late():
    cohorts = {"a-treated": Cohort.TREATED, "b-holdout": Cohort.HOLDOUT}
    windows = [
        window("b-holdout", "1.0.0", 0), window("b-holdout", "1.0.0", 1), window("b-holdout", "1.0.0", 2),
        window("a-treated", "1.0.0", 0),  # still installing in the first window
        window("a-treated", "2.0.0", 1, 0.7), window("a-treated", "2.0.0", 2, 0.7),
    ]  # fmt: skip
    values = device_values(windows, cohorts, new_version="2.0.0", baseline_version="1.0.0", spec=SPEC, since=T0)
    assert [v.device_id for v in values] == ["a-treated", "b-holdout"]
    assert values[0].completed_at == values[1].completed_at
    assert values[0].values["mean_confidence"] == 0.7


def test_without_settling_the_holdout_would_finish_first():
    cohorts = {"a-treated": Cohort.TREATED, "b-holdout": Cohort.HOLDOUT}
    windows = [window("b-holdout", "1.0.0", k) for k in range(3)] + [window("a-treated", "2.0.0", k) for k in (1, 2)]
    unsettled = parse_spec({**SPEC.canonical(), "settle_windows": 0})
    values = device_values(windows, cohorts, new_version="2.0.0", baseline_version="1.0.0", spec=unsettled, since=T0)
    assert [v.device_id for v in values] == ["b-holdout", "a-treated"]


def test_windows_of_the_other_arms_version_and_waiting_devices_do_not_count():
    cohorts = {"a": Cohort.TREATED, "w": Cohort.WAITING}
    windows = [window("a", "1.0.0", k) for k in (1, 2)] + [window("w", "1.0.0", k) for k in (1, 2)]
    assert device_values(windows, cohorts, new_version="2.0.0", baseline_version="1.0.0", spec=SPEC, since=T0) == []
