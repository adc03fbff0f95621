"""The inference worker: real ONNX Runtime in a real child process, under a watchdog that kills and replaces it.

The hang and the runtime error come from a real ONNX model with traps: an
input holding a value above 100 sets the trip count of a ``Loop`` to about 1e11
(it spins for hours), a value below -100 makes a ``Gather`` index out of range
(ONNX Runtime raises). Validation-like inputs in [0, 1] run normally.
"""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from modelfleet.agent import RuntimeConfig
from modelfleet.agent._worker import InferenceWorker
from modelfleet.errors import ConfigError, IncompatibleError
from modelfleet.sim.models import trap_classifier

FEATURES, CLASSES = 8, 3
SLACK_S = 0.5  # scheduling slack on a busy 2-core machine
NORMAL = np.random.default_rng(0).uniform(0.0, 1.0, (5, FEATURES)).astype(np.float32)
HANGS = np.full((1, FEATURES), 1000.0, np.float32)
RAISES = np.full((1, FEATURES), -1000.0, np.float32)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return trap_classifier(tmp_path_factory.mktemp("trap") / "trap.onnx", features=FEATURES, classes=CLASSES).path


@pytest.fixture
def events():
    return []


@pytest.fixture
def make_worker(model, events):
    workers = []

    def make(path=None, **settings):
        config = RuntimeConfig(**({"timeout_s": 1.0, "start_timeout_s": 60.0} | settings))
        worker = InferenceWorker(path or model, config, on_event=lambda *event: events.append(event), name="trap")
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.close()


def wait_for(condition, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def timed(call):
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def alive(pid):
    """Any thread of ``pid`` still runs; a zombie whose threads have all exited has closed its files."""
    proc = Path(f"/proc/{pid}")
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z" or len(list((proc / "task").iterdir())) > 1
    except FileNotFoundError:
        return False


# ------------------------------------------------------------------ answers


def test_answers_are_onnx_runtimes_answers(make_worker, model):
    worker = make_worker()
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])

    outcome = worker.infer({"X": NORMAL})

    assert outcome.failure is None
    np.testing.assert_array_equal(outcome.outputs["probabilities"], session.run(None, {"X": NORMAL})[0])


def test_concurrent_callers_each_get_their_own_answer(make_worker):
    worker = make_worker(max_queue=8)
    rows = [NORMAL[i : i + 1] for i in range(len(NORMAL))]
    expected = [worker.infer({"X": row}).outputs["probabilities"] for row in rows]
    results = [None] * len(rows)

    def call(index):
        results[index] = worker.infer({"X": rows[index]}, 5.0)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(rows))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for result, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(result.outputs["probabilities"], want)


def test_a_runtime_error_is_reported_and_the_worker_keeps_running(make_worker, events):
    worker = make_worker()
    pid = worker.pid

    outcome = worker.infer({"X": RAISES})

    assert (outcome.outputs, outcome.failure) == (None, "error")
    assert "Gather" in outcome.detail
    assert worker.infer({"X": NORMAL}).failure is None
    assert (worker.pid, worker.restarts, events) == (pid, 0, [])


# ------------------------------------------------------------------ hangs and crashes


def test_a_hung_inference_times_out_and_the_worker_is_killed_and_replaced(make_worker, events):
    worker = make_worker(timeout_s=1.0)
    hung_pid = worker.pid

    outcome, elapsed = timed(lambda: worker.infer({"X": HANGS}))

    assert outcome.failure == "timeout"
    assert elapsed < 1.0 + SLACK_S
    wait_for(lambda: worker.restarts == 1)
    assert worker.wait_ready(10.0)
    assert worker.pid != hung_pid
    wait_for(lambda: not alive(hung_pid))
    assert worker.infer({"X": NORMAL}).failure is None
    ((kind, reason, detail),) = events
    assert kind == "worker_restarted"
    assert "longer than 1.0 s" in reason
    assert (detail["old_pid"], detail["new_pid"], detail["exit_code"]) == (hung_pid, worker.pid, -signal.SIGKILL)


def test_a_worker_that_dies_during_an_inference_is_reported_at_once_and_replaced(make_worker, events):
    # ONNX Runtime cannot be made to segfault on purpose; SIGKILL from outside is what the kernel's OOM
    # killer or a native crash does to the process, and the worker cannot tell them apart.
    worker = make_worker(timeout_s=30.0)
    doomed = worker.pid
    threading.Timer(0.3, os.kill, (doomed, signal.SIGKILL)).start()

    outcome, elapsed = timed(lambda: worker.infer({"X": HANGS}))

    assert outcome.failure == "crashed"
    assert elapsed < 0.3 + SLACK_S + 1.0  # far below the 30 s bound
    assert worker.wait_ready(10.0)
    assert worker.pid != doomed
    assert worker.infer({"X": NORMAL}).failure is None
    assert [kind for kind, _, _ in events] == ["worker_restarted"]


def test_a_worker_that_died_while_idle_is_replaced_and_the_request_still_answered(make_worker, events):
    worker = make_worker()
    idle = worker.pid
    os.kill(idle, signal.SIGKILL)
    wait_for(lambda: not alive(idle))

    outcome = worker.infer({"X": NORMAL}, 10.0)

    assert outcome.failure is None
    assert worker.pid != idle
    assert [kind for kind, _, _ in events] == ["worker_restarted"]


def test_a_worker_that_cannot_start_again_ends_in_a_crash_loop(make_worker, tmp_path, events):
    path = trap_classifier(tmp_path / "vanishing.onnx", features=FEATURES, classes=CLASSES).path
    worker = make_worker(path, max_start_failures=2)
    path.unlink()  # the model is gone: every restart fails to load it
    os.kill(worker.pid, signal.SIGKILL)

    first = worker.infer({"X": NORMAL}, 10.0)
    wait_for(lambda: events)  # the replacement attempts run after the caller got its answer
    later, elapsed = timed(lambda: worker.infer({"X": NORMAL}))

    assert first.failure in {"crashed", "unavailable"}
    assert later.failure == "unavailable"
    assert elapsed < 0.1
    assert not worker.wait_ready(0.1)
    assert [kind for kind, _, _ in events] == ["crash_loop"]


# ------------------------------------------------------------------ the queue


def test_a_full_queue_is_answered_at_once_and_a_queued_request_times_out_without_a_kill(make_worker, events):
    worker = make_worker(timeout_s=1.5, max_queue=1)
    busy = threading.Thread(target=worker.infer, args=({"X": HANGS},))
    busy.start()
    time.sleep(0.2)  # the dispatcher has taken the hanging request; the queue is empty
    queued = {}
    waiting = threading.Thread(target=lambda: queued.update(outcome=worker.infer({"X": NORMAL}, 0.5)))
    waiting.start()
    time.sleep(0.1)

    full, elapsed = timed(lambda: worker.infer({"X": NORMAL}))

    assert full.failure == "queue_full"
    assert elapsed < 0.1
    waiting.join()
    assert queued["outcome"].failure == "queue_timeout"
    busy.join()
    wait_for(lambda: worker.restarts == 1)  # only the hung request's bound kills the worker
    assert [kind for kind, _, _ in events] == ["worker_restarted"]


# ------------------------------------------------------------------ placement and lifecycle


def test_the_worker_runs_on_the_configured_cpus_at_the_configured_niceness(make_worker):
    worker = make_worker(cpu_affinity=frozenset({0}), nice=5)

    assert os.sched_getaffinity(worker.pid) == {0}
    assert os.getpriority(os.PRIO_PROCESS, worker.pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 5)
    assert worker.infer({"X": NORMAL}).failure is None


def test_a_model_the_runtime_cannot_load_is_refused_with_the_reason(make_worker, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")

    with pytest.raises(IncompatibleError, match="could not load") as refused:
        make_worker(broken)

    assert refused.value.code == "model_load_failed"


def test_after_close_calls_are_answered_unavailable_and_the_process_is_gone(make_worker):
    worker = make_worker()
    pid = worker.pid

    worker.close()

    assert worker.infer({"X": NORMAL}).failure == "unavailable"
    wait_for(lambda: not alive(pid))


def test_a_worker_leaves_when_its_parent_is_killed_even_while_the_model_spins(model):
    parent = subprocess.Popen([sys.executable, "-c", PARENT_SCRIPT, str(model)], stdout=subprocess.PIPE, text=True)
    worker_pid = int(parent.stdout.readline())
    time.sleep(0.3)  # the worker is inside the spinning Loop

    parent.kill()
    parent.wait()

    wait_for(lambda: not alive(worker_pid), timeout_s=5.0)


PARENT_SCRIPT = textwrap.dedent(
    """
    import sys, threading, time
    from pathlib import Path
    import numpy as np
    from modelfleet.agent import RuntimeConfig
    from modelfleet.agent._worker import InferenceWorker
    worker = InferenceWorker(Path(sys.argv[1]), RuntimeConfig(timeout_s=600.0))
    threading.Thread(target=worker.infer, args=({"X": np.full((1, 8), 1000.0, np.float32)},), daemon=True).start()
    print(worker.pid, flush=True)
    time.sleep(600)
    """
)


BAD_SETTINGS = {
    "zero timeout": {"timeout_s": 0},
    "infinite timeout": {"timeout_s": float("inf")},
    "no queue": {"max_queue": 0},
    "negative niceness": {"nice": -1},
    "empty affinity": {"cpu_affinity": frozenset()},
    "long window": {"window_seconds": 86_401},
}


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
def test_unusable_settings_are_refused(case):
    with pytest.raises(ConfigError, match="runtime setting") as refused:
        RuntimeConfig(**BAD_SETTINGS[case])
    assert refused.value.code == "bad_setting"
