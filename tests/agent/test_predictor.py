"""``Predictor`` on real signed bundles, extracted as a device installs them, run by real ONNX Runtime workers.

Versions of the ``digits`` model: 1.0.0 and 1.1.0 are MLPs trained on
scikit-learn's digits; 2.0.0 and 2.1.0 are "trap" builds of the same contract
whose ONNX graph spins in a ``Loop`` for hours on an input above 100 and makes
ONNX Runtime raise on an input below -100 (inputs in [0, 1], as the validation
set, run normally). 2.0.0 declares ``fallback_class=7``; 2.1.0 declares none.
"""

import os
import re
import signal
import threading
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelfleet.agent import InstalledVersion, Predictor, RuntimeConfig
from modelfleet.agent._contract import layout_of
from modelfleet.agent._modes import time_slice_choice
from modelfleet.bundle import BuildOptions, SigningKey, TrustedKeys, ValidationSet, build_bundle, read_bundle
from modelfleet.clock import ManualClock
from modelfleet.errors import ConfigError, IncompatibleError, ModelfleetError
from modelfleet.sim import digits_mlp, tiny_cnn
from modelfleet.sim.models import trap_classifier
from modelfleet.telemetry import Summarizer, feature_values

START = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SLACK_S = 0.5  # scheduling slack on a busy 2-core machine
HANGS = np.full((1, 64), 1000.0, np.float32)
RAISES = np.full((1, 64), -1000.0, np.float32)
EVENT_ID = re.compile(r"^[0-9a-f]{32}$")


# ------------------------------------------------------------------ bundles


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return digits_mlp(tmp_path_factory.mktemp("digits") / "digits.onnx", seed=0)


@pytest.fixture(scope="module")
def installed(tmp_path_factory, digits):
    """Every version built, signed, written and extracted with ``read_bundle``, by version."""
    work = tmp_path_factory.mktemp("installed")
    key = SigningKey.generate()
    digits_11 = digits_mlp(work / "digits-1.1.0.onnx", seed=1, hidden=16)
    cnn = tiny_cnn(work / "cnn.onnx")
    builds = {
        "1.0.0": (digits.path, digits, {}),
        "1.1.0": (digits_11.path, digits, {}),
        "2.0.0": (trap_classifier(work / "trap-2.0.0.onnx", batch=None).path, digits, {"fallback_class": 7}),
        "2.1.0": (trap_classifier(work / "trap-2.1.0.onnx", batch=None).path, digits, {}),
        "cnn": (cnn.path, cnn, {}),
    }
    versions = {}
    for version, (model, case, extra) in builds.items():
        name, semver = ("cnn", "1.0.0") if version == "cnn" else ("digits", version)
        options = BuildOptions(name=name, version=semver, release=1, labels=case.labels, **extra)
        bundle = work / f"{version}.mfb"
        build_bundle(model, ValidationSet({"x": case.x_val}, case.y_val), [key], bundle, options)
        verified = read_bundle(bundle, TrustedKeys.of([key.public]), extract_to=work / version)
        versions[version] = InstalledVersion(verified.manifest, work / version / "model.onnx")
    return versions


@pytest.fixture
def clock():
    return ManualClock(START)


@pytest.fixture
def make(installed, clock):
    """``make(version, **predictor_options)``; every predictor is closed after the test."""
    made = []

    def predictor(version="1.0.0", *, config=None, **options):
        config = config or RuntimeConfig(timeout_s=1.0)
        for role in ("candidate", "previous"):
            if isinstance(options.get(role), str):
                options[role] = installed[options[role]]
        manifest, model_path = installed[version]
        made.append(Predictor(manifest, model_path, config=config, clock=clock, salt=b"test", **options))
        return made[-1]

    yield predictor
    for predictor in made:
        predictor.close()


def ort_scores(installed, version, x):
    session = ort.InferenceSession(str(installed[version].model_path), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"X": x})[0]


def by_role(summaries):
    return {(summary.version, summary.role): summary for summary in summaries}


def only_one(summaries):
    assert len(summaries) == 1
    return summaries[0]


def wait_for_event(predictor, kind, seen, timeout_s=15.0):
    deadline = time.monotonic() + timeout_s
    while not any(event.kind == kind for event in seen):
        assert time.monotonic() < deadline, f"no {kind} event"
        seen.extend(predictor.drain_events())
        time.sleep(0.02)
    return seen


def timed(call):
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


# ------------------------------------------------------------------ active


def test_answers_are_the_models_answers(make, installed, digits):
    predictor = make("1.0.0")
    x = digits.x_val[:25]

    prediction = predictor.predict({"X": x})

    expected = ort_scores(installed, "1.0.0", x)
    np.testing.assert_array_equal(prediction.outputs["probabilities"], expected)
    np.testing.assert_array_equal(prediction.top1, expected.argmax(axis=1))
    np.testing.assert_array_equal(prediction.confidence, expected.max(axis=1).astype(np.float64))
    assert (prediction.version, prediction.fallback, prediction.reason) == ("1.0.0", False, None)


def test_a_single_input_model_takes_a_bare_array(make, digits):
    predictor = make("1.0.0")
    row = digits.x_val[:1]

    assert predictor.predict(row).top1 == predictor.predict({"X": row}).top1


def test_every_call_is_counted_exactly(make, installed, digits):
    predictor = make("2.0.0")
    x, y = digits.x_val, digits.y_val
    for i in range(5):
        predictor.predict(x[i : i + 1], label=y[i : i + 1])
    predictor.predict(x[5:9], label=np.r_[y[5:7], -1, -1])
    predictor.predict(RAISES)
    predictor.predict(RAISES, label=[3])
    predictor.predict(HANGS)

    summary = by_role(predictor.flush(final=True))["2.0.0", "active"]

    assert (summary.n, summary.errors, summary.timeouts, summary.fallbacks) == (12, 2, 1, 3)
    assert sum(summary.latency_counts) == 12
    assert all(sum(counts) == 12 for counts in summary.feature_counts)
    assert len(summary.feature_counts) == 64
    assert sum(summary.confidence_counts) == sum(summary.predicted_counts) == 9
    labelled_answers = ort_scores(installed, "2.0.0", x[:7]).argmax(axis=1)  # the failed rows count no labels
    assert summary.n_labelled == 7
    assert summary.n_correct == int(np.count_nonzero(labelled_answers == y[:7]))


def test_with_telemetry_off_nothing_is_counted(make, digits):
    predictor = make("1.0.0", config=RuntimeConfig(telemetry=False))

    predictor.predict(digits.x_val[:3])

    assert predictor.flush(final=True) == []


def test_concurrent_callers_are_all_answered_and_counted(make, digits):
    predictor = make("1.0.0", config=RuntimeConfig(timeout_s=10.0, max_queue=40))  # room for every caller
    rows = [digits.x_val[i : i + 1] for i in range(40)]
    expected = [predictor.predict(row).top1 for row in rows]
    predictor.flush(final=True)
    answers = [None] * len(rows)

    def call(index):
        answers[index] = predictor.predict(rows[index]).top1

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(rows))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [int(a[0]) for a in answers] == [int(e[0]) for e in expected]
    assert by_role(predictor.flush(final=True))["1.0.0", "active"].n == 40


# ------------------------------------------------------------------ the contract


def refused_inputs():
    row = np.zeros((1, 64), np.float32)
    return {
        "another name": ({"x": row}, ValueError, "inputs must be exactly"),
        "an extra input": ({"X": row, "Y": row}, ValueError, "unexpected \\['Y'\\]"),
        "float64": ({"X": row.astype(np.float64)}, ValueError, "wrong dtype"),
        "rank 1": ({"X": row[0]}, ValueError, "wrong rank"),
        "63 features": ({"X": row[:, :63]}, ValueError, "axis 1 must be 64"),
        "no rows": ({"X": row[:0]}, ValueError, "at least one"),
        "a list": ({"X": row.tolist()}, TypeError, "numpy array"),
    }


@pytest.mark.parametrize("case", list(refused_inputs()))
def test_inputs_that_break_the_contract_are_refused_before_inference(make, case):
    inputs, error, message = refused_inputs()[case]
    predictor = make("1.0.0")

    with pytest.raises(error, match=message):
        predictor.predict(inputs)

    assert predictor.flush(final=True) == []
    assert predictor.drain_events() == []


@pytest.mark.parametrize("case", list(refused_inputs()))
def test_inputs_that_break_the_contract_are_refused_after_good_calls_too(make, case):
    # Accepted (names, dtypes, shapes) are remembered so the check runs once per layout: nothing else may pass.
    inputs, error, message = refused_inputs()[case]
    predictor = make("1.0.0", config=RuntimeConfig(timeout_s=1.0, isolation="inline"))
    good = np.zeros((1, 64), np.float32)
    predictor.predict({"X": good})
    predictor.predict(good)

    with pytest.raises(error, match=message):
        predictor.predict(inputs)

    assert counted(predictor) == 2


def counted(predictor):
    return sum(summary.n for summary in predictor.flush(final=True))


REFUSED_LABELS = {"too many": [1, 2], "not integers": [0.5], "nested wrongly": [[1, 2]]}


@pytest.mark.parametrize("case", list(REFUSED_LABELS))
def test_labels_must_be_one_integer_per_row(make, case):
    predictor = make("1.0.0")
    with pytest.raises(ValueError, match="label"):
        predictor.predict(np.zeros((1, 64), np.float32), label=REFUSED_LABELS[case])


def test_an_image_model_checks_its_channels(make):
    predictor = make("cnn")

    with pytest.raises(ValueError, match="axis 1 must be 3"):
        predictor.predict(np.zeros((1, 4, 16, 16), np.float32))
    assert predictor.predict(np.zeros((2, 3, 16, 16), np.float32)).top1.shape == (2,)


REFUSED_SETUPS = {
    "shadow without a candidate": ({"mode": "shadow"}, ValueError, "needs a candidate"),
    "a candidate in active mode": ({"candidate": "1.1.0"}, ValueError, "takes no candidate"),
    "the active version as candidate": ({"mode": "shadow", "candidate": "1.0.0"}, ValueError, "is the active"),
    "another model as candidate": ({"mode": "shadow", "candidate": "cnn"}, IncompatibleError, "model name"),
    "another model as previous": ({"previous": "cnn"}, IncompatibleError, "model name"),
}


@pytest.mark.parametrize("case", list(REFUSED_SETUPS))
def test_setups_that_cannot_work_are_refused(make, case):
    options, error, message = REFUSED_SETUPS[case]
    with pytest.raises(error, match=message):
        make("1.0.0", **options)


# ------------------------------------------------------------------ shadow


def test_shadow_mode_answers_exactly_as_active_mode_and_records_agreement(make, installed, digits):
    config = RuntimeConfig(timeout_s=5.0, shadow_queue=1000)
    active = make("1.0.0", config=config)
    shadow = make("1.0.0", config=config, mode="shadow", candidate="1.1.0")
    x, y = digits.x_val, digits.y_val
    calls = [slice(i, i + 1) for i in range(60)] + [slice(i, i + 30) for i in range(60, len(x), 30)]

    answers = []
    for rows in calls:
        alone, shadowed = active.predict(x[rows], label=y[rows]), shadow.predict(x[rows], label=y[rows])
        np.testing.assert_array_equal(shadowed.top1, alone.top1)
        np.testing.assert_array_equal(shadowed.confidence, alone.confidence)
        np.testing.assert_array_equal(shadowed.outputs["probabilities"], alone.outputs["probabilities"])
        assert (shadowed.version, shadowed.fallback) == ("1.0.0", False)
        answers.append(alone.top1)

    assert shadow.wait_shadow(60.0)
    assert shadow.shadow_skipped == 0
    summaries = by_role(shadow.flush(final=True))
    assert set(summaries) == {("1.0.0", "active"), ("1.1.0", "shadow")}
    active_top1 = np.concatenate(answers)
    candidate = ort_scores(installed, "1.1.0", x)
    stats = summaries["1.1.0", "shadow"].shadow
    assert (stats.active_version, stats.n_compared) == ("1.0.0", len(x))
    assert stats.n_agree == int(np.count_nonzero(candidate.argmax(axis=1) == active_top1))
    assert stats.active_correct == int(np.count_nonzero(active_top1 == y))
    assert stats.candidate_correct == int(np.count_nonzero(candidate.argmax(axis=1) == y))
    assert stats.active_confidence_sum == pytest.approx(float(np.sum(ort_scores(installed, "1.0.0", x).max(axis=1))))
    assert summaries["1.1.0", "shadow"].confidence_sum == pytest.approx(float(candidate.max(axis=1).sum()), rel=1e-6)
    assert summaries["1.0.0", "active"].n == summaries["1.1.0", "shadow"].n == len(x)


def test_a_hanging_shadow_candidate_never_delays_the_caller(make):
    predictor = make("1.0.0", mode="shadow", candidate="2.0.0")

    prediction, elapsed = timed(lambda: predictor.predict(HANGS))

    assert (prediction.version, prediction.fallback) == ("1.0.0", False)
    assert elapsed < SLACK_S
    assert predictor.wait_shadow(1.0 + SLACK_S + 10.0)
    summaries = by_role(predictor.flush(final=True))
    candidate = summaries["2.0.0", "shadow"]
    assert (candidate.n, candidate.timeouts, candidate.fallbacks, candidate.shadow.n_compared) == (1, 1, 0, 0)
    assert summaries["1.0.0", "active"].timeouts == 0


# ------------------------------------------------------------------ time slice


def test_the_time_slice_schedule_is_deterministic_and_balanced():
    devices = [f"device-{i}" for i in range(50)]
    schedules = {device: [time_slice_choice(device, slot, 2) for slot in range(100)] for device in devices}

    assert schedules == {device: [time_slice_choice(device, slot, 2) for slot in range(100)] for device in devices}
    for schedule in schedules.values():
        assert all(sorted(schedule[block : block + 2]) == [0, 1] for block in range(0, 100, 2))
    first_slots = [schedule[0] for schedule in schedules.values()]
    assert 10 < sum(first_slots) < 40  # devices do not all start with the same version
    three = [time_slice_choice("device-0", slot, 3) for slot in range(300)]
    assert all(sorted(three[block : block + 3]) == [0, 1, 2] for block in range(0, 300, 3))


def test_time_slice_mode_answers_by_the_schedule(make, clock):
    predictor = make("1.0.0", mode="time_slice", candidate="1.1.0", device_id="pi-42")
    row = np.zeros((1, 64), np.float32)
    served = []

    for slot in range(20):
        slot_start = datetime.fromtimestamp((int(START.timestamp()) // 600 + slot) * 600, UTC)
        clock.advance((slot_start + timedelta(seconds=1) - clock.now()).total_seconds())
        served.append(predictor.predict(row).version)

    first_slot = int(START.timestamp()) // 600
    expected = [("1.0.0", "1.1.0")[time_slice_choice("pi-42", first_slot + slot, 2)] for slot in range(20)]
    assert served == expected
    assert served.count("1.0.0") == served.count("1.1.0") == 10
    totals = {}
    for summary in predictor.flush(final=True):
        assert summary.role == "time_slice"
        totals[summary.version] = totals.get(summary.version, 0) + summary.n
    assert totals == {"1.0.0": 10, "1.1.0": 10}


# ------------------------------------------------------------------ failures


def test_a_hung_model_gets_the_fallback_class_in_time_and_its_worker_is_replaced(make, digits):
    predictor = make("2.0.0", config=RuntimeConfig(timeout_s=1.0))
    hung_pid = predictor._active.worker.pid

    prediction, elapsed = timed(lambda: predictor.predict(HANGS))

    assert elapsed < 1.0 + SLACK_S
    assert (prediction.fallback, prediction.reason, prediction.version) == (True, "timeout", None)
    assert (prediction.top1.tolist(), prediction.confidence.tolist(), dict(prediction.outputs)) == ([7], [0.0], {})
    events = wait_for_event(predictor, "worker_restarted", [])
    assert predictor.wait_ready(10.0)
    assert predictor._active.worker.pid != hung_pid
    after = predictor.predict(digits.x_val[:1])
    assert (after.fallback, after.version) == (False, "2.0.0")
    fallback = next(event for event in events if event.kind == "fallback")
    assert (fallback.model, fallback.version, fallback.detail["answered_by"]) == ("digits", "2.0.0", "fallback_class")
    assert fallback.reason.startswith("timeout")
    assert all(EVENT_ID.fullmatch(event.id) for event in events)
    summary = by_role(predictor.flush(final=True))["2.0.0", "active"]
    assert (summary.n, summary.timeouts, summary.fallbacks, summary.errors) == (2, 1, 1, 0)


def test_a_hung_model_is_answered_for_by_the_previous_version(make, installed):
    predictor = make("2.0.0", previous="1.0.0", config=RuntimeConfig(timeout_s=1.0, fallback_timeout_s=2.0))

    prediction, elapsed = timed(lambda: predictor.predict(HANGS))

    assert elapsed < 1.0 + SLACK_S  # the previous version answers at once
    assert (prediction.fallback, prediction.reason, prediction.version) == (True, "timeout", "1.0.0")
    np.testing.assert_array_equal(prediction.outputs["probabilities"], ort_scores(installed, "1.0.0", HANGS))
    events = predictor.drain_events()
    assert [event.detail["answered_by"] for event in events if event.kind == "fallback"] == ["1.0.0"]
    assert {(s.version, s.role) for s in predictor.flush(final=True)} == {("2.0.0", "active")}


def test_a_runtime_error_gets_a_fallback_and_the_worker_stays(make):
    predictor = make("2.0.0")
    pid = predictor._active.worker.pid

    prediction = predictor.predict(RAISES)

    assert (prediction.fallback, prediction.reason, prediction.top1.tolist()) == (True, "error", [7])
    (event,) = predictor.drain_events()
    assert event.kind == "fallback"
    assert "Gather" in event.reason
    assert predictor._active.worker.pid == pid
    summary = by_role(predictor.flush(final=True))["2.0.0", "active"]
    assert (summary.errors, summary.fallbacks, summary.timeouts) == (1, 1, 0)


def test_a_worker_killed_during_an_inference_gets_a_fallback_at_once(make, digits):
    # SIGKILL from outside stands for a native crash or the OOM killer: ONNX Runtime cannot be crashed on purpose.
    predictor = make("2.0.0", config=RuntimeConfig(timeout_s=30.0))
    doomed = predictor._active.worker.pid
    threading.Timer(0.3, os.kill, (doomed, signal.SIGKILL)).start()

    prediction, elapsed = timed(lambda: predictor.predict(HANGS))

    assert (prediction.fallback, prediction.reason) == (True, "crashed")
    assert elapsed < 0.3 + SLACK_S + 1.0
    events = wait_for_event(predictor, "worker_restarted", [])
    assert sorted(event.kind for event in events) == ["fallback", "worker_restarted"]
    assert predictor.wait_ready(10.0)
    assert predictor.predict(digits.x_val[:1]).fallback is False


def test_without_any_fallback_the_caller_gets_a_clear_error_in_time(make):
    predictor = make("2.1.0")

    with pytest.raises(ModelfleetError, match="no fallback_class") as failed:
        timed(lambda: predictor.predict(HANGS))

    assert failed.value.code == "no_fallback"
    events = wait_for_event(predictor, "worker_restarted", [])
    fallback = next(event for event in events if event.kind == "fallback")
    assert fallback.detail["answered_by"] == "nothing"
    summary = by_role(predictor.flush(final=True))["2.1.0", "active"]
    assert (summary.n, summary.timeouts, summary.fallbacks) == (1, 1, 1)


# ------------------------------------------------------------------ inline isolation

INLINE = RuntimeConfig(timeout_s=1.0, isolation="inline")


def test_inline_answers_are_the_models_answers_and_are_counted(make, installed, digits):
    predictor = make("1.0.0", config=INLINE)
    x = digits.x_val[:25]

    prediction = predictor.predict({"X": x})

    np.testing.assert_array_equal(prediction.outputs["probabilities"], ort_scores(installed, "1.0.0", x))
    assert (prediction.version, prediction.fallback, predictor._active.worker.pid) == ("1.0.0", False, None)
    assert by_role(predictor.flush(final=True))["1.0.0", "active"].n == 25


@pytest.mark.parametrize("config", [INLINE, RuntimeConfig(timeout_s=1.0)], ids=["inline", "process"])
def test_one_row_calls_count_what_the_summarizer_counts_of_their_arrays(make, installed, digits, clock, config):
    # The Predictor hands a one-row answer to the summarizer in plain numbers: the same summary, but for latency.
    predictor = make("1.0.0", config=config)
    manifest, x = installed["1.0.0"].manifest, digits.x_val[:70]  # more rows than one pending block holds
    layout = layout_of(manifest)
    reference = Summarizer(layout, "digits", "1.0.0", "active", clock, salt=b"test")
    scores = ort_scores(installed, "1.0.0", x).astype(np.float64)
    for i in range(len(x)):
        predictor.predict({"X": x[i : i + 1]})
        features = feature_values({"X": x[i : i + 1]}, layout.input_order)
        reference.observe(features, scores[i : i + 1].max(axis=1), scores[i : i + 1].argmax(axis=1), 1.0)

    got = by_role(predictor.flush(final=True))["1.0.0", "active"]

    latency = {"latency_counts", "latency_sum_ms"}
    assert got.model_dump(exclude=latency) == only_one(reference.flush(final=True)).model_dump(exclude=latency)


def test_inline_a_hung_model_is_terminated_and_gets_the_fallback_class(make, digits):
    predictor = make("2.0.0", config=INLINE)

    prediction = predictor.predict(HANGS)  # returns only because the watchdog terminated the run

    assert (prediction.fallback, prediction.reason, prediction.top1.tolist()) == (True, "timeout", [7])
    after = [predictor.predict(digits.x_val[i : i + 1]) for i in range(3)]  # the same session serves on
    assert [(answer.fallback, answer.version) for answer in after] == [(False, "2.0.0")] * 3
    summary = by_role(predictor.flush(final=True))["2.0.0", "active"]
    assert (summary.n, summary.timeouts, summary.fallbacks) == (4, 1, 1)


def test_inline_a_runtime_error_gets_a_fallback(make):
    predictor = make("2.0.0", config=INLINE)

    prediction = predictor.predict(RAISES)

    assert (prediction.fallback, prediction.reason, prediction.top1.tolist()) == (True, "error", [7])
    (event,) = predictor.drain_events()
    assert "Gather" in event.reason


def nan_classifier(path, features=64, classes=10):
    """A softmax classifier of ``sqrt(X)``: any negative input makes every score NaN (inputs >= 0 run normally)."""
    weights = np.random.default_rng(2).standard_normal((features, classes)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Sqrt", ["X"], ["root"]),
            helper.make_node("MatMul", ["root", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "nan",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, classes])],
        [numpy_helper.from_array(weights, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def nan_version(tmp_path_factory, digits):
    """Version 2.2.0: scores NaN on a negative input; declares ``fallback_class=7``."""
    work = tmp_path_factory.mktemp("nan")
    key = SigningKey.generate()
    options = BuildOptions(name="digits", version="2.2.0", release=1, labels=digits.labels, fallback_class=7)
    model = nan_classifier(work / "nan.onnx")
    build_bundle(model, ValidationSet({"x": digits.x_val}, digits.y_val), [key], work / "nan.mfb", options)
    verified = read_bundle(work / "nan.mfb", TrustedKeys.of([key.public]), extract_to=work / "x")
    return InstalledVersion(verified.manifest, work / "x" / "model.onnx")


@pytest.mark.parametrize("isolation", ["process", "inline"])
@pytest.mark.parametrize("rows", [1, 3])  # one row is read where the model ran, a batch by the caller
def test_scores_holding_nan_get_a_fallback_and_count_as_an_error(nan_version, digits, clock, isolation, rows):
    config = RuntimeConfig(timeout_s=5.0, isolation=isolation)
    with Predictor(nan_version.manifest, nan_version.model_path, config=config, clock=clock, salt=b"t") as predictor:
        good = predictor.predict(digits.x_val[:rows])
        bad = predictor.predict(-digits.x_val[:rows] - 1.0)

        assert not good.fallback
        assert (bad.fallback, bad.reason, bad.top1.tolist()) == (True, "error", [7] * rows)
        (event,) = predictor.drain_events()
        assert "NaN or infinite" in event.reason
        summary = only_one(predictor.flush(final=True))
    assert (summary.n, summary.errors, summary.fallbacks) == (2 * rows, rows, rows)


def test_inline_needs_onnx_runtime(installed):
    def other_runtime(config):
        return object()

    manifest, path = installed["1.0.0"]
    with pytest.raises(ConfigError, match="inline"):
        Predictor(manifest, path, config=INLINE, runtime=other_runtime)
