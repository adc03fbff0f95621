"""The post-switch health check with real ONNX Runtime, and the live-inference watch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from modelfleet.agent import HealthPolicy, LiveVerdict, LiveWatch, SlotStore, check_health
from modelfleet.bundle import Manifest
from modelfleet.errors import ConfigError

MODEL = "digits"


@pytest.fixture(scope="module")
def store(tmp_path_factory, kit) -> SlotStore:
    """Every module bundle published once."""
    store = SlotStore(tmp_path_factory.mktemp("health"), keep=10)
    for bundle in (kit.bundles.v1, kit.bundles.slow):
        store.publish(MODEL, bundle.path, kit.bundles.trusted, version=bundle.version, sha256=bundle.sha256)
    return store


def published(store: SlotStore, bundle) -> tuple[Path, Manifest]:
    slot = store.slot(MODEL, bundle.slot)
    return slot.path, slot.manifest()


def writable_copy(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    dest.chmod(0o755)
    for path in dest.iterdir():
        path.chmod(0o644)
    return dest


def test_a_healthy_version_passes_and_reports_what_it_measured(store, kit):
    directory, manifest = published(store, kit.bundles.v1)

    report = check_health(directory, manifest, HealthPolicy(latency_runs=3))

    assert report.passed, report.reasons
    assert report.reasons == ()
    assert report.measurements["latency_ms"] > 0
    assert report.measurements["golden_max_abs_diff"] <= manifest.evidence.golden.atol
    assert report.measurements["ram_growth_bytes"] >= 0


def test_a_latency_budget_no_model_can_meet_fails_with_the_numbers(store, kit):
    directory, manifest = published(store, kit.bundles.slow)

    report = check_health(directory, manifest)

    assert not report.passed
    assert report.reasons == (
        f"median latency {report.measurements['latency_ms']:.3g} ms exceeds the budget of 1e-06 ms",
    )


# Measured in a fresh interpreter: in this long-lived test process the allocator may
# serve the model from memory that earlier tests freed, so the peak would not move.
_MEASURE_IN_FRESH_PROCESS = """
import json, sys
from pathlib import Path
from modelfleet.agent import check_health
from modelfleet.bundle import parse_manifest
report = check_health(Path(sys.argv[1]), parse_manifest(Path(sys.argv[2]).read_bytes()))
print(json.dumps({"passed": report.passed, "reasons": report.reasons, "measurements": report.measurements}))
"""


def test_a_memory_budget_below_the_peak_growth_fails(store, kit, tmp_path):
    directory, manifest = published(store, kit.bundles.v1)
    tight = manifest.model_copy(
        update={
            "behaviour": manifest.behaviour.model_copy(
                update={"budgets": manifest.behaviour.budgets.model_copy(update={"max_ram_bytes": 1})}
            )
        }
    )
    manifest_file = tmp_path / "tight.json"
    manifest_file.write_bytes(tight.to_bytes())

    result = subprocess.run(
        [sys.executable, "-c", _MEASURE_IN_FRESH_PROCESS, str(directory), str(manifest_file)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    report = json.loads(result.stdout)

    assert not report["passed"]
    assert "peak memory grew by" in report["reasons"][0]
    assert report["measurements"]["ram_peak_exact"] == 1.0  # /proc/self/clear_refs works here


def test_outputs_that_differ_from_the_golden_vectors_fail(store, kit, tmp_path):
    directory, manifest = published(store, kit.bundles.v1)
    copy = writable_copy(directory, tmp_path / "copy")
    with np.load(copy / "golden.npz") as archive:
        arrays = {key: archive[key] for key in archive.files}
    arrays["output.probabilities"] = arrays["output.probabilities"] + 0.01
    np.savez(copy / "golden.npz", **arrays)

    report = check_health(copy, manifest)

    assert not report.passed
    assert report.reasons[0].startswith("golden output probabilities: max |diff| 0.01 beyond atol")


def test_a_model_that_does_not_load_fails_without_raising(store, kit, tmp_path):
    directory, manifest = published(store, kit.bundles.v1)
    copy = writable_copy(directory, tmp_path / "copy")
    (copy / "model.onnx").write_bytes(b"not a model")

    report = check_health(copy, manifest)

    assert not report.passed
    assert report.reasons[0].startswith("the model does not run:")


def test_a_format_onnx_runtime_cannot_run_is_reported(store, kit):
    directory, manifest = published(store, kit.bundles.v1)
    tflite = manifest.model_copy(update={"model": manifest.model.model_copy(update={"format": "tflite"})})

    report = check_health(directory, tflite)

    assert (report.passed, report.reasons) == (False, ("the health check runs ONNX models, not tflite",))


def test_a_policy_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError):
        HealthPolicy(latency_runs=0)


# ------------------------------------------------------------------ live inferences

LIVE = {
    "no watch": (0, 0, [], LiveVerdict.PASSED),
    "waiting": (3, 0, [False, False], LiveVerdict.PENDING),
    "all good": (3, 0, [False, False, False], LiveVerdict.PASSED),
    "first error fails at once": (5, 0, [True], LiveVerdict.FAILED),
    "errors within the allowance": (4, 1, [False, True, False, False], LiveVerdict.PASSED),
    "errors beyond the allowance": (4, 1, [True, False, True], LiveVerdict.FAILED),
    "later inferences do not count": (2, 0, [False, False, True, True], LiveVerdict.PASSED),
}


@pytest.mark.parametrize("name", sorted(LIVE))
def test_live_watch_verdicts(name):
    inferences, max_errors, observed, verdict = LIVE[name]
    watch = LiveWatch(inferences, max_errors)
    for error in observed:
        watch.observe_live(error)

    assert watch.verdict() == verdict


# inferences, max errors, minimum by the deadline, observed, seconds since the trial began -> verdict
LIVE_DEADLINE = {
    "before the deadline: pending": (5, 0, 2, [False, False], 59.0, LiveVerdict.PENDING),
    "at the deadline with the minimum: passed": (5, 0, 2, [False, False], 60.0, LiveVerdict.PASSED),
    "at the deadline below the minimum: failed": (5, 0, 2, [False], 60.0, LiveVerdict.FAILED),
    "a quiet device with no minimum: passed": (5, 0, 0, [], 61.0, LiveVerdict.PASSED),
    "errors beyond the allowance fail before it": (5, 0, 0, [True], 1.0, LiveVerdict.FAILED),
    "errors beyond the allowance fail at it too": (5, 1, 0, [True, True], 90.0, LiveVerdict.FAILED),
    "all seen before it: passed": (2, 0, 2, [False, False], 1.0, LiveVerdict.PASSED),
}


@pytest.mark.parametrize("name", sorted(LIVE_DEADLINE))
def test_live_watch_ends_at_its_deadline(name):
    inferences, max_errors, minimum, observed, elapsed, verdict = LIVE_DEADLINE[name]
    watch = LiveWatch(inferences, max_errors, deadline_s=60.0, min_inferences=minimum)
    for error in observed:
        watch.observe_live(error)

    assert watch.verdict(elapsed) == verdict


def test_a_trial_failed_by_its_deadline_says_so():
    watch = LiveWatch(10, deadline_s=30.0, min_inferences=3)
    watch.observe_live(error=False)

    assert watch.verdict(31.0) == LiveVerdict.FAILED
    assert watch.expired
    assert watch.reason.startswith("the live trial reached its deadline of 30 s with 1 of 10 inferences")


BAD_LIVE_POLICIES = {
    "no deadline": {"live_inferences": 3, "live_deadline_s": float("inf")},
    "a zero deadline": {"live_inferences": 3, "live_deadline_s": 0.0},
    "a minimum above the watched": {"live_inferences": 3, "min_live_inferences": 4},
    "a negative minimum": {"live_inferences": 3, "min_live_inferences": -1},
}


@pytest.mark.parametrize("name", sorted(BAD_LIVE_POLICIES))
def test_a_live_trial_without_a_sound_bound_is_refused(name):
    with pytest.raises(ConfigError, match="health policy out of range"):
        HealthPolicy(**BAD_LIVE_POLICIES[name])


def test_live_watch_counts_from_many_threads_exactly():
    watch = LiveWatch(5000, max_errors=5000)
    threads = [threading.Thread(target=lambda: [watch.observe_live(error=True) for _ in range(1000)]) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert watch.verdict() == LiveVerdict.PASSED
    assert watch.reason.startswith("5000 of the first 5000 live inferences failed")
