"""Inference in a worker process, under a watchdog: a model that hangs or crashes never stalls its caller.

One :class:`InferenceWorker` owns one model in one child process (placed on the
configured CPUs, at the configured niceness). The caller's own thread speaks to
the child: callers take turns (one inference at a time; the others wait in
arrival order, at most ``max_queue`` of them, each no longer than its time
bound), and the caller whose turn it is sends its inputs and waits for the
answer until its bound. No other thread is woken on the way: on a small device
each wake-up costs tens of microseconds, a noticeable part of a 1 ms inference.

A caller whose inference ran past the bound kills the child; a caller whose
child died gets ``crashed``. Either way it returns at once and hands its turn
to a recovery thread, which starts a replacement (a fresh interpreter loading
the model can take seconds) and then passes the turn on, so a restart never
delays the caller that caused it. A caller whose bound ran out while it waited
for its turn leaves too, and the recovery thread waits out the rest of that
inference's own bound before it kills anything. Watchdog times are real
monotonic time, not the injected clock: a real process runs in real time even
in a simulation.

The child is a fresh interpreter started with :mod:`subprocess` and spoken to
through a :class:`multiprocessing.connection.Connection` over a socket pair.
``multiprocessing``'s spawn and forkserver methods would re-import the
application's ``__main__`` in every worker, so an application that builds a
``Predictor`` at module level (no ``if __name__ == "__main__"`` guard) would
break; a plain interpreter imports only this module.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Literal, NamedTuple

from modelfleet.agent._runtime import Array, OnnxRuntime, Runtime, RuntimeConfig, RuntimeFactory
from modelfleet.agent._scores import ScoreReader
from modelfleet.errors import IncompatibleError

__all__ = ["FailureKind", "InferenceWorker", "Outcome", "WorkerEventKind", "main", "read_outcome", "serve"]

logger = logging.getLogger(__name__)

FailureKind = Literal["timeout", "queue_full", "queue_timeout", "crashed", "error", "unavailable"]
"""Why a request got no answer: no answer within its bound (past the bound, the worker is killed), found the
queue full, waited past its bound without starting, lost its worker, failed in the runtime, or found no worker
that could start."""

WorkerEventKind = Literal["worker_restarted", "crash_loop"]
EventSink = Callable[[WorkerEventKind, str, Mapping[str, int | str | None]], None]

_CHILD_MAIN = "import sys; from modelfleet.agent._worker import main; main(int(sys.argv[1]))"
_PARENT_POLL_S = 0.5
_STOP_JOIN_S = 2.0
_MAX_BACKOFF_S = 2.0

_Taken = Literal["taken", "handed"]
_Refused = Literal["full", "late", "shut"]


class Outcome(NamedTuple):
    """The answer to one request: the outputs, or why there are none (made on every call: a tuple).

    ``row``: a one-row answer's ``(confidence, class)``, when the worker was given a reader that reads it.
    """

    outputs: dict[str, Array] | None
    failure: FailureKind | None = None
    detail: str = ""
    row: tuple[float, int] | None = None


class _StartError(Exception):
    """A worker did not come up; the message says why."""


class _Waiter:
    """A caller waiting for its turn; ``answer``, set under the turn's lock, says how the wait ended."""

    __slots__ = ("answer", "wake")

    def __init__(self) -> None:
        self.answer: Literal["handed", "shut"] | None = None
        self.wake = threading.Lock()
        self.wake.acquire()


class _Turn:
    """Whose turn it is to use the worker: one holder, the others waiting in arrival order, at most ``limit``.

    The holder gives the turn straight to the longest waiter, so no caller arriving later
    jumps the line, and another thread than the taker may give it (the recovery thread).
    Taking a free turn costs one uncontended lock: no thread is woken.
    """

    def __init__(self, limit: int) -> None:
        self._lock = threading.Lock()
        self._limit = limit
        self._held = False
        self._shut = False
        self._line: deque[_Waiter] = deque()

    def take(self, timeout_s: float, *, closing: bool = False) -> _Taken | _Refused:
        """Take the turn: ``taken`` at once, ``handed`` after waiting; or why not (line full, too late, shut).

        ``closing``: the closer's last take, allowed after :meth:`shut` and past the limit.
        """
        with self._lock:
            if self._shut and not closing:
                return "shut"
            if not self._held:
                self._held = True
                return "taken"
            if len(self._line) >= self._limit and not closing:
                return "full"
            waiter = _Waiter()
            self._line.append(waiter)
        return self.wait(waiter, timeout_s)

    def line_up_first(self) -> _Waiter:
        """Wait at the head of the line (the holder, about to hand its turn to a recovery and then retry)."""
        waiter = _Waiter()
        with self._lock:
            if self._shut:
                waiter.answer = "shut"
                waiter.wake.release()
            else:
                self._line.appendleft(waiter)
        return waiter

    def wait(self, waiter: _Waiter, timeout_s: float) -> _Taken | _Refused:
        """Wait in line up to ``timeout_s``: ``handed`` the turn, ``shut`` out, or ``late``."""
        woken = waiter.wake.acquire(timeout=max(0.0, timeout_s))
        with self._lock:
            answer = waiter.answer
            if answer is None:
                self._line.remove(waiter)
                return "late"
        if answer == "handed" and not woken:  # handed over just as the wait ran out: pass it on
            self.give()
            return "late"
        return answer

    def give(self) -> None:
        """Pass the turn to the longest waiter, or free it."""
        with self._lock:
            if self._line:
                waiter = self._line.popleft()
                waiter.answer = "handed"
                waiter.wake.release()
            else:
                self._held = False

    def shut(self) -> None:
        """Refuse the turn from now on (but to the closer) and send every waiting caller away."""
        with self._lock:
            if self._shut:
                return
            self._shut = True
            for waiter in self._line:
                waiter.answer = "shut"
                waiter.wake.release()
            self._line.clear()


class _Child:
    """A started worker process and the parent's end of its connection; killed if forgotten.

    Only the holder of the turn reads or writes the connection.
    """

    def __init__(self, process: subprocess.Popen[bytes], connection: Connection) -> None:
        self.process = process
        self.connection = connection
        self._poll = select.poll()  # registered once: cheaper per wait than multiprocessing's wait()
        self._poll.register(connection.fileno(), select.POLLIN)
        self._reaper = weakref.finalize(self, _kill_quietly, process)

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def send(self, number: int, inputs: Mapping[str, Array]) -> bool:
        """Hand a request to the worker; ``False`` when its end of the socket is gone.

        A plain pickle: ``Connection.send``'s pickler (it can pass sockets and locks) takes longer to make.
        """
        try:
            self.connection.send_bytes(pickle.dumps((number, inputs), pickle.HIGHEST_PROTOCOL))
        except OSError:
            return False
        return True

    def answer(self, number: int, deadline: float) -> Outcome | None:
        """The outcome of request ``number`` if it comes before ``deadline``, else ``None``.

        Answers to earlier requests are skipped.

        Raises:
            EOFError, OSError: the worker died (its end of the socket closed with it).
        """
        while (remaining := deadline - time.monotonic()) > 0:
            if not self._poll.poll(math.ceil(remaining * 1000)):
                continue
            answer, *fields = self.connection.recv()  # a plain tuple on the wire: no class to look up
            if answer == number:
                return Outcome(*fields)
        return None

    def kill(self) -> int | None:
        """Kill the process if it still runs (SIGKILL: a runtime busy in native code may ignore less) and reap it."""
        self._reaper.detach()
        _kill_quietly(self.process)
        self.connection.close()
        return self.process.returncode


def _kill_quietly(process: subprocess.Popen[bytes]) -> None:
    """Kill and reap a worker process."""
    process.kill()  # a no-op once the process has been reaped
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(_STOP_JOIN_S)


@dataclass(frozen=True, slots=True)
class _Recovery:
    """What the recovery thread does with the turn: wait out a run its caller left, replace the worker if it must.

    Attributes:
        reason: why the worker is replaced (the event's reason).
        run: a run still going whose caller left (its worker, its request number, the end of its bound).
    """

    reason: str
    run: tuple[_Child, int, float] | None = None


class InferenceWorker:
    """One model in a worker process, with a bounded line of callers and a watchdog; thread-safe.

    The first start happens in the constructor, so a model this device cannot
    load is refused at once.

    Args:
        model_path: the model file.
        config: bounds and placement.
        runtime: makes the runtime inside the worker (picklable).
        on_event: told about restarts and crash loops (kind, reason, detail); called from the recovery thread.
        name: how logs and thread names call the model.
        reader: reads a one-row answer in the worker, right after the inference (``Outcome.row``); an
            answer it refuses is an ``error`` outcome.

    Raises:
        IncompatibleError: ``model_load_failed`` when the worker cannot start or load the model.
    """

    def __init__(
        self,
        model_path: Path,
        config: RuntimeConfig,
        *,
        runtime: RuntimeFactory = OnnxRuntime,
        on_event: EventSink | None = None,
        name: str = "model",
        reader: ScoreReader | None = None,
    ) -> None:
        self._model_path = model_path
        self._config = config
        self._runtime = runtime
        self._reader = reader
        self._on_event = on_event
        self._name = name
        self._turn = _Turn(config.max_queue)
        self._numbers = itertools.count()
        self._ready = threading.Event()
        self._stopping = threading.Event()  # set by close: ends a restart's backoff early
        self._unavailable = False
        self._closed = False
        self._starting: subprocess.Popen[bytes] | None = None
        self._recovery: threading.Thread | None = None
        self.restarts = 0
        try:
            self._child: _Child | None = self._start()
        except _StartError as exc:
            msg = f"{name}: the worker could not load {model_path}: {exc}"
            raise IncompatibleError(msg, code="model_load_failed") from None
        self._ready.set()

    @property
    def pid(self) -> int | None:
        """The current worker process id, if one runs."""
        child = self._child
        return child.pid if child is not None else None

    def infer(self, inputs: Mapping[str, Array], timeout_s: float | None = None) -> Outcome:
        """Run one inference, waiting at most ``timeout_s`` (default: the configured bound); never raises.

        The worker is killed when the inference itself runs longer than the bound; a
        caller whose bound ran out while it waited for its turn leaves without a kill.
        """
        bound = self._config.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + bound
        if self._unavailable or self._closed:
            return self._refusal("shut", bound)
        taken = self._turn.take(bound)
        for retry in (False, True):
            match taken:
                case "full" | "late" | "shut":
                    return self._refusal(taken, bound)
            try:
                result = self._attempt(inputs, bound, deadline, whole=taken == "taken", retry=retry)
            except Exception as exc:  # a bug here must not keep the turn from every later caller
                logger.exception("%s: an inference failed in the parent", self._name)
                result = Outcome(None, "error", f"{type(exc).__name__}: {exc}"), None
            if not isinstance(result, _Recovery):
                outcome, recovery = result
                if recovery is None:
                    self._turn.give()
                else:
                    self._recover(recovery)  # the recovery thread has the turn now
                return outcome
            # the worker was gone before the request, so the model never saw it: wait for its replacement
            waiter = self._turn.line_up_first()  # before the recovery can give the turn on
            self._recover(result)
            taken = self._turn.wait(waiter, deadline - time.monotonic())
        return self._refusal("late", bound)  # not reached: a second attempt always has an outcome

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until a worker is up (after a restart); ``False`` on timeout or when none can start."""
        return self._ready.wait(timeout_s) and not self._unavailable

    def close(self) -> None:
        """Answer waiting and later calls ``unavailable``, let a running inference end (within the bound), stop."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        self._turn.shut()
        starting = self._starting
        if starting is not None:  # a replacement still loading gives up at once
            starting.kill()
        taken = self._turn.take(self._config.timeout_s + _STOP_JOIN_S, closing=True)
        if taken not in {"taken", "handed"}:  # a caller with a longer bound of its own still waits: end its run
            child = self._child
            if child is not None:
                child.process.kill()
            taken = self._turn.take(_STOP_JOIN_S, closing=True)
        recovery = self._recovery
        if recovery is not None:
            recovery.join(_STOP_JOIN_S)
        if taken in {"taken", "handed"}:
            self._stop_child(graceful=True)

    # ------------------------------------------------------------------ the caller's turn

    def _attempt(
        self, inputs: Mapping[str, Array], bound: float, deadline: float, *, whole: bool, retry: bool
    ) -> tuple[Outcome, _Recovery | None] | _Recovery:
        """Holding the turn: send the inputs, wait for the answer until ``deadline``.

        Returns the outcome, and the recovery to hand the turn to when the worker must be
        waited out or replaced. Only a recovery (first attempt only): the worker was gone
        before the request, the model never saw it, and the caller may wait for a replacement.

        Args:
            inputs: the feeds.
            bound: the caller's time bound, and the longest the run may take before the worker is killed.
            deadline: when the caller stops waiting.
            whole: the turn came at once, so the caller's deadline is also the end of the run's bound.
            retry: the second attempt, on a replacement.
        """
        number = next(self._numbers)
        child = self._child
        if child is None or not child.send(number, inputs):
            self._ready.clear()
            if retry:
                detail = "a fresh worker did not take the request"
                return Outcome(None, "crashed", detail), _Recovery(detail)
            return _Recovery(_gone(child))
        until = deadline if whole else time.monotonic() + bound
        try:
            answer = child.answer(number, deadline)
        except (EOFError, OSError):
            self._ready.clear()
            detail = "the worker died during the inference"
            return Outcome(None, "crashed", detail), _Recovery(detail)
        if answer is not None:
            return answer, None
        reason = f"an inference ran longer than {bound} s"
        if time.monotonic() < until:  # the caller spent part of its bound in line: the run may still end in its own
            detail = f"no answer within {bound} s, part of it spent waiting for the worker"
            return Outcome(None, "timeout", detail), _Recovery(reason, (child, number, until))
        child.process.kill()  # ends the hang now; the recovery thread reaps it and starts a replacement
        self._ready.clear()
        return Outcome(None, "timeout", f"{reason}; the worker is replaced"), _Recovery(reason)

    def _refusal(self, why: _Refused, bound: float) -> Outcome:
        """The outcome of a call that never reached the worker."""
        if why == "full":
            return Outcome(None, "queue_full", f"{self._config.max_queue} inferences already waiting")
        if why == "late":
            return Outcome(None, "queue_timeout", f"the inference did not start within {bound} s")
        if self._closed:
            return Outcome(None, "unavailable", f"{self._name}: the worker is closed")
        return Outcome(None, "unavailable", f"{self._name}: no worker could be started")

    # ------------------------------------------------------------------ recovery, off the caller's path

    def _recover(self, recovery: _Recovery) -> None:
        """Hand the turn to a thread that waits out or replaces the worker and then gives the turn on."""
        thread = threading.Thread(
            target=self._run_recovery, args=(recovery,), name=f"modelfleet-{self._name}-restart", daemon=True
        )
        self._recovery = thread
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: the next caller finds the worker gone and tries again
            logger.exception("%s: cannot start the recovery thread", self._name)
            self._turn.give()

    def _run_recovery(self, recovery: _Recovery) -> None:
        """The recovery thread: do what ``recovery`` says, then give the turn on, whatever happened."""
        try:
            if recovery.run is None:
                self._restart(recovery.reason)
            elif (reason := self._wait_out(*recovery.run, reason=recovery.reason)) is not None:
                self._restart(reason)
        except Exception:  # the turn must be given on whatever happened
            logger.exception("%s: recovering the worker failed", self._name)
        finally:
            self._turn.give()

    def _wait_out(self, child: _Child, number: int, until: float, *, reason: str) -> str | None:
        """Wait for a run its caller left until the end of the run's bound; why the worker must go, if it must."""
        try:
            if child.answer(number, until) is not None:
                return None
        except (EOFError, OSError):
            return "the worker died during the inference"
        child.process.kill()
        return reason

    def _restart(self, reason: str) -> _Child | None:
        """Replace the worker, retrying with backoff; ``None`` (and a crash loop event) if none starts."""
        self._ready.clear()
        old_pid, exit_code = self.pid, self._stop_child(graceful=False)
        for attempt in range(self._config.max_start_failures):
            if self._closed:
                return None
            try:
                child = self._start()
            except _StartError as exc:
                if self._closed:  # close() stopped it
                    return None
                logger.warning("%s: worker start %d failed: %s", self._name, attempt + 1, exc)
                if attempt + 1 < self._config.max_start_failures:
                    self._stopping.wait(min(_MAX_BACKOFF_S, 0.1 * 2**attempt))
                continue
            if self._closed:  # closed while this one was starting
                child.kill()
                return None
            self._child = child
            self.restarts += 1
            self._ready.set()
            detail = {"old_pid": old_pid, "new_pid": child.pid, "exit_code": exit_code, "restarts": self.restarts}
            self._emit("worker_restarted", reason, detail)
            return child
        if self._closed:
            return None
        self._unavailable = True
        self._turn.shut()  # every caller waiting in line is answered unavailable
        self._ready.set()
        self._emit("crash_loop", reason, {"failed_starts": self._config.max_start_failures})
        return None

    def _emit(self, kind: WorkerEventKind, reason: str, detail: Mapping[str, int | str | None]) -> None:
        logger.warning("%s: %s (%s) %s", self._name, kind, reason, dict(detail))
        if self._on_event is not None:
            self._on_event(kind, reason, detail)

    # ------------------------------------------------------------------ processes

    def _start(self) -> _Child:
        """Start a worker process and wait until its model is loaded (``close`` kills one still loading)."""
        parent_end, child_end = socket.socketpair()
        with child_end:
            process = subprocess.Popen(  # noqa: S603 - this interpreter running this module; no shell, no user input
                [sys.executable, "-c", _CHILD_MAIN, str(child_end.fileno())],
                pass_fds=(child_end.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        child = _Child(process, Connection(parent_end.detach()))
        self._starting = process
        if self._closed:  # close() looked before this start was recorded
            process.kill()
        try:
            child.connection.send((self._runtime, self._model_path, self._config, self._reader))
            ready = wait([child.connection], self._config.start_timeout_s)
            status, payload = child.connection.recv() if ready else ("late", None)
        except (EOFError, OSError):
            msg = f"the worker exited with code {child.kill()} while starting"
            raise _StartError(msg) from None
        finally:
            self._starting = None
        if status != "ready":
            child.kill()
            late = f"not ready within {self._config.start_timeout_s} s"
            raise _StartError(late if status == "late" else str(payload))
        return child

    def _stop_child(self, *, graceful: bool) -> int | None:
        """Stop the current worker (``graceful``: ask first, kill if it does not leave); return its exit code."""
        child, self._child = self._child, None
        if child is None:
            return None
        if graceful:
            with contextlib.suppress(OSError, ValueError):  # already gone
                child.connection.send(None)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(_STOP_JOIN_S)
        return child.kill()


def read_outcome(outputs: dict[str, Array], inputs: Mapping[str, Array], reader: ScoreReader | None) -> Outcome:
    """The outcome of a run that returned ``outputs``: with its one-row answer when ``reader`` reads one.

    An answer the reader refuses (wrong shape, NaN or infinite scores) is an ``error`` outcome.
    """
    if reader is None:
        return Outcome(outputs)
    try:
        return Outcome(outputs, None, "", reader.row(outputs, len(next(iter(inputs.values())))))
    except ValueError as exc:
        return Outcome(None, "error", str(exc))


def _gone(child: _Child | None) -> str:
    """Why a worker did not take a request."""
    if child is None:
        return "no worker was running"
    code = child.process.poll()
    return "the worker was gone before the inference" if code is None else f"the worker had exited with code {code}"


# ------------------------------------------------------------------ inside the worker process


def main(fd: int) -> None:
    """Worker process entry point: serve the parent on the connection at file descriptor ``fd``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when a worker ends, not a terminal's Ctrl-C
    _exit_with_parent()
    connection = Connection(fd)
    try:
        runtime, model_path, config, reader = connection.recv()
    except (EOFError, OSError):
        return
    serve(connection, runtime, model_path, config, reader)


def serve(
    connection: Connection,
    runtime: RuntimeFactory,
    model_path: Path,
    config: RuntimeConfig,
    reader: ScoreReader | None = None,
) -> None:
    """Place this process, load the model, then answer requests until told to stop or the parent goes away."""
    try:
        _place(config)
        engine = runtime(config)
        engine.load(model_path)
    except Exception as exc:  # noqa: BLE001 - any load failure is reported to the parent as text
        connection.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    connection.send(("ready", os.getpid()))
    try:
        while (message := _receive(connection)) is not None:
            number, inputs = message
            outcome = _answer(engine, reader, inputs)
            connection.send_bytes(pickle.dumps((number, *outcome), pickle.HIGHEST_PROTOCOL))
    finally:
        engine.close()


def _answer(engine: Runtime, reader: ScoreReader | None, inputs: Mapping[str, Array]) -> Outcome:
    """Run the model once and read its answer; the runtime's error goes back to the caller as text."""
    try:
        outputs = engine.run(inputs)
    except Exception as exc:  # noqa: BLE001 - any runtime failure is an outcome, never an exception
        return Outcome(None, "error", f"{type(exc).__name__}: {exc}")
    return read_outcome(outputs, inputs, reader)


def _receive(connection: Connection) -> tuple[int, Mapping[str, Array]] | None:
    """The next request, or ``None`` when told to stop or the parent went away."""
    try:
        message: tuple[int, Mapping[str, Array]] | None = connection.recv()
    except (EOFError, OSError):
        return None
    return message


def _place(config: RuntimeConfig) -> None:
    """Pin to the configured CPUs and lower the priority."""
    if config.cpu_affinity is not None:
        os.sched_setaffinity(0, config.cpu_affinity)
    if config.nice:
        os.nice(config.nice)


def _exit_with_parent() -> None:
    """Leave when the process that started this one goes away, even while the runtime is busy.

    A hung runtime never reads its pipe, so it would not notice; a thread watching
    the parent id does (the runtime releases the GIL while it computes).
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="modelfleet-parent-watch", daemon=True).start()
