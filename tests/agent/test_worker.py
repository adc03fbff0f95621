"""The inference worker: real ONNX Runtime in a real child process, under a watchdog that kills and replaces it.

The hang and the runtime error come from a real ONNX model with traps: an
input holding a value above 100 sets the trip count of a ``Loop`` to about 1e11
(it spins for hours), a value below -100 makes a ``Gather`` index out of range
(ONNX Runtime raises). Validation-like inputs in [0, 1] run normally.
"""

import importlib
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

from modelfleet.agent import OnnxRuntime, RuntimeConfig
from modelfleet.agent._inline import InlineWorker
from modelfleet.agent._scores import ScoreReader
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

    def make(path=None, runtime=OnnxRuntime, **settings):
        config = RuntimeConfig(**({"timeout_s": 1.0, "start_timeout_s": 60.0} | settings))
        sink = events.append
        worker = InferenceWorker(path or model, config, runtime=runtime, on_event=lambda *e: sink(e), name="trap")
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


def worker_processes():
    """Worker processes this test process started that still run."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):  # it ended while being looked at
            continue
        if ppid == os.getpid() and b"modelfleet.agent._worker" in command and alive(int(entry.name)):
            found.add(int(entry.name))
    return found


def spinning_rows(worker):
    """Rows that make the trap model's ``Loop`` spin for about a given time, timed on this worker now.

    The trip count is (max(X) - 100) * 1e9, so it grows by the same step with each float32 above 100.
    """
    step = np.spacing(np.float32(100.0))

    def row(steps):
        x = NORMAL[:1].copy()
        x[0, 0] = np.float32(100.0) + np.float32(steps) * step
        return x

    probe = 40
    outcome, elapsed = timed(lambda: worker.infer({"X": row(probe)}, 30.0))
    assert outcome.failure is None
    assert elapsed > 0.05, "the probe spin is too short to time"
    return lambda seconds: row(max(1, round(seconds / elapsed * probe)))


SLOW_START = textwrap.dedent(
    """
    import time
    from modelfleet.agent import OnnxRuntime

    class SlowStart:
        \"\"\"ONNX Runtime, made after the pause written in a file (at once while there is no file).\"\"\"

        def __init__(self, pause_file):
            self.pause_file = pause_file

        def __call__(self, config):
            if self.pause_file.exists():
                time.sleep(float(self.pause_file.read_text()))
            return OnnxRuntime(config)
    """
)


@pytest.fixture
def slow_start(tmp_path, monkeypatch):
    """A runtime factory whose starts take as long as the returned file says, and that file.

    Loading a model slowly on purpose needs code in the worker process, which is a fresh
    interpreter: the factory's module is written to a directory on its ``PYTHONPATH``.
    """
    (tmp_path / "slow_start.py").write_text(SLOW_START)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    module = importlib.import_module("slow_start")
    yield module.SlowStart(tmp_path / "pause"), tmp_path / "pause"
    sys.modules.pop("slow_start", None)


# ------------------------------------------------------------------ answers


def test_answers_are_onnx_runtimes_answers(make_worker, model):
    worker = make_worker()
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])

    outcome = worker.infer({"X": NORMAL})

    assert outcome.failure is None
    np.testing.assert_array_equal(outcome.outputs["probabilities"], session.run(None, {"X": NORMAL})[0])


READER = ScoreReader(output="probabilities", n_classes=CLASSES, logits=False)


@pytest.mark.parametrize("kind", [InferenceWorker, InlineWorker])
def test_a_reader_reads_a_one_row_answer_where_the_model_ran(model, kind):
    with_reader = kind(model, RuntimeConfig(), reader=READER)
    try:
        one, batch = with_reader.infer({"X": NORMAL[:1]}), with_reader.infer({"X": NORMAL})
    finally:
        with_reader.close()

    assert one.failure is None
    assert one.row == READER(one.outputs, 1).row  # read in the worker, as the caller would have read it
    assert (type(one.row[0]), type(one.row[1])) == (float, int)
    assert batch.failure is None
    assert batch.row is None  # a batch is read whole, by the caller


REFUSING = {
    "wrong class count": ScoreReader(output="probabilities", n_classes=CLASSES + 1, logits=False),
    "missing output": ScoreReader(output="scores", n_classes=CLASSES, logits=False),
}


@pytest.mark.parametrize("kind", [InferenceWorker, InlineWorker])
@pytest.mark.parametrize("case", list(REFUSING))
def test_an_answer_the_reader_refuses_is_an_error_and_the_worker_keeps_serving(model, kind, case):
    worker = kind(model, RuntimeConfig(), reader=REFUSING[case])
    try:
        refused, again = worker.infer({"X": NORMAL[:1]}), worker.infer({"X": NORMAL})
    finally:
        worker.close()

    assert (refused.outputs, refused.failure) == (None, "error")
    assert "scores output" in refused.detail
    assert again.failure is None  # a batch is not read in the worker: the same worker answers it


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
    time.sleep(0.2)  # the hanging request has the turn; nobody waits
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


@pytest.mark.parametrize("max_queue", [2, 4])
def test_exactly_max_queue_callers_wait_and_the_next_is_refused_at_once(make_worker, events, max_queue):
    worker = make_worker(timeout_s=1.5, max_queue=max_queue)
    busy = threading.Thread(target=worker.infer, args=({"X": HANGS},))
    busy.start()
    wait_for(lambda: worker._turn._held)
    outcomes = []

    def wait_in_line():
        outcomes.append(worker.infer({"X": NORMAL}, 0.8))

    waiting = [threading.Thread(target=wait_in_line) for _ in range(max_queue)]
    for thread in waiting:
        thread.start()
    wait_for(lambda: len(worker._turn._line) == max_queue)

    full, elapsed = timed(lambda: worker.infer({"X": NORMAL}))

    assert full.failure == "queue_full"
    assert elapsed < 0.1
    for thread in waiting:
        thread.join()
    assert [outcome.failure for outcome in outcomes] == ["queue_timeout"] * max_queue
    busy.join()
    wait_for(lambda: worker.restarts == 1)
    assert [kind for kind, _, _ in events] == ["worker_restarted"]


def test_many_threads_at_once_each_get_the_answers_to_their_own_inputs(make_worker, model):
    threads, calls = 8, 25
    worker = make_worker(max_queue=threads)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rows = np.random.default_rng(7).uniform(0.0, 1.0, (threads, calls, 1, FEATURES)).astype(np.float32)
    got = [[] for _ in range(threads)]
    start = threading.Barrier(threads)

    def caller(index):
        start.wait()
        for row in rows[index]:
            got[index].append(worker.infer({"X": row}, 10.0))

    callers = [threading.Thread(target=caller, args=(index,)) for index in range(threads)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join()

    for index in range(threads):
        assert [outcome.failure for outcome in got[index]] == [None] * calls
        for row, outcome in zip(rows[index], got[index], strict=True):
            np.testing.assert_array_equal(outcome.outputs["probabilities"], session.run(None, {"X": row})[0])
    assert worker.restarts == 0


def test_a_caller_out_of_time_in_line_leaves_but_its_run_keeps_its_own_bound(make_worker, model, events):
    # A's run takes about 1 s, so B (bound 2.5 s) gets the turn with about 1.5 s left and leaves with a
    # timeout at its own deadline. B's run hangs, but it gets the full 2.5 s that runs get from their start:
    # the worker is killed that much after B's request went out, well after B left, and C (waiting behind
    # B) gets the answer to its own input from the replacement. B's hang needs no timing, and A's spin
    # may take from a quarter to over twice its planned time on a machine whose load changes under the test.
    worker = make_worker(timeout_s=3.0, max_queue=4)
    spin = spinning_rows(worker)
    pid = worker.pid
    results = {}

    def call(name, row, bound):
        results[name] = timed(lambda: worker.infer({"X": row}, bound)), time.monotonic()

    plan = [("a", spin(1.0), 3.0), ("b", HANGS, 2.5), ("c", NORMAL[2:3], 10.0)]
    callers = [threading.Thread(target=call, args=step) for step in plan]
    callers[0].start()
    wait_for(lambda: worker._turn._held)
    for waiting, thread in enumerate(callers[1:], start=1):
        thread.start()
        wait_for(lambda: len(worker._turn._line) == waiting)  # noqa: B023 - used before the loop moves on
    callers[1].join()
    wait_for(lambda: not alive(pid))
    killed = time.monotonic()
    callers[2].join()

    (a, _), _ = results["a"]
    (b, b_elapsed), b_left = results["b"]
    (c, _), _ = results["c"]
    assert a.failure is None
    assert (b.failure, "waiting" in b.detail) == ("timeout", True)
    assert 2.5 - 0.05 < b_elapsed < 2.5 + SLACK_S
    assert 0.25 < killed - b_left < 2.5 + SLACK_S  # the run's own bound, counted from when it started
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(c.outputs["probabilities"], session.run(None, {"X": NORMAL[2:3]})[0])
    assert (worker.restarts, [kind for kind, _, _ in events]) == (1, ["worker_restarted"])
    assert "longer than 2.5 s" in events[0][1]


# ------------------------------------------------------------------ restarts off the caller's path


def test_a_timed_out_caller_is_answered_while_its_replacement_is_still_loading(make_worker, slow_start, events):
    runtime, pause = slow_start
    worker = make_worker(runtime=runtime, timeout_s=0.5)
    pause.write_text("3")  # every start from now on takes 3 s longer

    outcome, elapsed = timed(lambda: worker.infer({"X": HANGS}))
    answered = time.monotonic()

    assert outcome.failure == "timeout"
    assert elapsed < 0.5 + SLACK_S
    assert (worker.restarts, worker.wait_ready(0)) == (0, False)  # the replacement is still loading
    waiting, waited = timed(lambda: worker.infer({"X": NORMAL}, 0.3))
    assert (waiting.failure, waited < 0.3 + SLACK_S) == ("queue_timeout", True)
    assert worker.wait_ready(30.0)
    assert time.monotonic() - answered > 2.5  # the 3 s load came after the caller had its answer
    assert worker.restarts == 1
    assert worker.infer({"X": NORMAL}).failure is None
    assert [kind for kind, _, _ in events] == ["worker_restarted"]


def test_a_caller_that_finds_its_worker_dead_waits_for_the_replacement_only_within_its_bound(
    make_worker, slow_start, events
):
    runtime, pause = slow_start
    worker = make_worker(runtime=runtime)
    pause.write_text("3")
    idle = worker.pid
    os.kill(idle, signal.SIGKILL)
    wait_for(lambda: not alive(idle))

    outcome, elapsed = timed(lambda: worker.infer({"X": NORMAL}, 0.5))

    assert outcome.failure == "queue_timeout"  # the model never saw the request
    assert elapsed < 0.5 + SLACK_S
    assert not worker.wait_ready(0)
    assert worker.wait_ready(30.0)
    assert worker.infer({"X": NORMAL}).failure is None
    assert [kind for kind, _, _ in events] == ["worker_restarted"]


def test_close_during_a_replacement_stops_the_loading_worker_at_once(make_worker, slow_start, events):
    runtime, pause = slow_start
    worker = make_worker(runtime=runtime, timeout_s=0.5)
    hung = worker.pid
    pause.write_text("60")
    assert worker.infer({"X": HANGS}).failure == "timeout"
    wait_for(lambda: len(worker_processes() - {hung}) == 1)
    (loading,) = worker_processes() - {hung}

    _, elapsed = timed(worker.close)

    assert elapsed < 1.0
    wait_for(lambda: not alive(loading) and not alive(hung), timeout_s=2.0)
    assert not [thread for thread in threading.enumerate() if thread.name == "modelfleet-trap-restart"]
    assert worker.infer({"X": NORMAL}).failure == "unavailable"
    assert events == []


def test_close_sends_waiting_callers_away_at_once_and_lets_the_running_inference_end(make_worker, events):
    worker = make_worker(timeout_s=1.0, max_queue=4)
    pid = worker.pid
    results = {}

    def call(name, row, bound):
        outcome = worker.infer({"X": row}, bound)
        results[name] = (outcome, time.monotonic())

    running = threading.Thread(target=call, args=("running", HANGS, 1.0))
    running.start()
    wait_for(lambda: worker._turn._held)
    waiting = [threading.Thread(target=call, args=(f"waiting {i}", NORMAL, 10.0)) for i in range(2)]
    for thread in waiting:
        thread.start()
    wait_for(lambda: len(worker._turn._line) == 2)

    closing = time.monotonic()
    worker.close()
    closed = time.monotonic()

    for thread in [running, *waiting]:
        thread.join()
    for name in ("waiting 0", "waiting 1"):
        outcome, ended = results[name]
        assert (outcome.failure, ended - closing < SLACK_S) == ("unavailable", True)
    assert results["running"][0].failure == "timeout"
    assert closed - closing < 1.0 + SLACK_S
    wait_for(lambda: not alive(pid))
    assert events == []  # closed before a replacement could start


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
    from modelfleet.agent import OnnxRuntime, RuntimeConfig
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
