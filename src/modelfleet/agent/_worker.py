"""Inference in a worker process, under a watchdog: a model that hangs or crashes never stalls its caller.

One :class:`InferenceWorker` owns one model in one child process (placed on the
configured CPUs, at the configured niceness). Callers put requests on a bounded
queue and wait at most their time bound; a dispatcher thread feeds the child one
request at a time and kills it when a request runs past the bound, or notices
when it died, then starts a replacement. Watchdog times are real monotonic time,
not the injected clock: a real process runs in real time even in a simulation.

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
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Literal

from modelfleet.agent._runtime import Array, OnnxRuntime, RuntimeConfig, RuntimeFactory
from modelfleet.errors import IncompatibleError

__all__ = ["FailureKind", "InferenceWorker", "Outcome", "WorkerEventKind", "main", "serve"]

logger = logging.getLogger(__name__)

FailureKind = Literal["timeout", "queue_full", "queue_timeout", "crashed", "error", "unavailable"]
"""Why a request got no answer: ran past its bound (worker killed), found the queue full, waited past its
bound without starting, lost its worker, failed in the runtime, or found no worker that could start."""

WorkerEventKind = Literal["worker_restarted", "crash_loop"]
EventSink = Callable[[WorkerEventKind, str, Mapping[str, int | str | None]], None]

_CHILD_MAIN = "import sys; from modelfleet.agent._worker import main; main(int(sys.argv[1]))"
_PARENT_POLL_S = 0.5
_STOP_JOIN_S = 2.0
_MAX_BACKOFF_S = 2.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """The answer to one request: the outputs, or why there are none."""

    outputs: dict[str, Array] | None
    failure: FailureKind | None = None
    detail: str = ""


class _StartError(Exception):
    """A worker did not come up; the message says why."""


class _Request:
    """One inference and its hand-over between the caller and the dispatcher."""

    def __init__(self, number: int, inputs: Mapping[str, Array], bound_s: float) -> None:
        self.number = number
        self.inputs = inputs
        self.bound_s = bound_s
        self.done = threading.Event()
        self.outcome: Outcome | None = None
        self._state: Literal["queued", "running", "done", "abandoned"] = "queued"
        self._lock = threading.Lock()

    def begin(self) -> bool:
        """Claim the request for running; ``False`` when its caller already gave up."""
        with self._lock:
            if self._state != "queued":
                return False
            self._state = "running"
            return True

    def finish(self, outcome: Outcome) -> None:
        """Hand the outcome to a caller still waiting."""
        with self._lock:
            if self._state == "abandoned":
                return
            self.outcome, self._state = outcome, "done"
        self.done.set()

    def abandon(self) -> Outcome:
        """The caller stops waiting: its outcome if one just arrived, else why there is none."""
        with self._lock:
            if self._state == "done" and self.outcome is not None:
                return self.outcome
            running = self._state == "running"
            self._state = "abandoned"
        if running:
            return Outcome(None, "timeout", f"the inference ran longer than {self.bound_s} s")
        return Outcome(None, "queue_timeout", f"the inference did not start within {self.bound_s} s")


class _Child:
    """A started worker process and the parent's end of its connection; killed if forgotten."""

    def __init__(self, process: subprocess.Popen[bytes], connection: Connection) -> None:
        self.process = process
        self.connection = connection
        self._reaper = weakref.finalize(self, _kill_quietly, process)

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

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


class InferenceWorker:
    """One model in a worker process, with a bounded queue and a watchdog; thread-safe.

    The first start happens in the constructor, so a model this device cannot
    load is refused at once.

    Args:
        model_path: the model file.
        config: bounds and placement.
        runtime: makes the runtime inside the worker (picklable).
        on_event: told about restarts and crash loops (kind, reason, detail); called from the dispatcher thread.
        name: how logs and thread names call the model.

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
    ) -> None:
        self._model_path = model_path
        self._config = config
        self._runtime = runtime
        self._on_event = on_event
        self._name = name
        self._queue: queue.Queue[_Request | None] = queue.Queue(maxsize=config.max_queue)
        self._numbers = itertools.count()
        self._ready = threading.Event()
        self._unavailable = False
        self._closed = False
        self.restarts = 0
        try:
            self._child: _Child | None = self._start()
        except _StartError as exc:
            msg = f"{name}: the worker could not load {model_path}: {exc}"
            raise IncompatibleError(msg, code="model_load_failed") from None
        self._ready.set()
        self._dispatcher = threading.Thread(target=self._dispatch, name=f"modelfleet-{name}-dispatch", daemon=True)
        self._dispatcher.start()

    @property
    def pid(self) -> int | None:
        """The current worker process id, if one runs."""
        child = self._child
        return child.pid if child is not None else None

    def infer(self, inputs: Mapping[str, Array], timeout_s: float | None = None) -> Outcome:
        """Run one inference, waiting at most ``timeout_s`` (default: the configured bound); never raises.

        The watchdog kills the worker when the inference itself runs longer than the
        bound; a request that waited in the queue until its caller gave up is skipped.
        """
        bound = self._config.timeout_s if timeout_s is None else timeout_s
        if self._unavailable or self._closed:
            return Outcome(None, "unavailable", f"{self._name}: no worker could be started")
        request = _Request(next(self._numbers), inputs, bound)
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            return Outcome(None, "queue_full", f"{self._config.max_queue} inferences already waiting")
        if request.done.wait(bound) and request.outcome is not None:
            return request.outcome
        return request.abandon()

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until a worker is up (after a restart); ``False`` on timeout or when none can start."""
        return self._ready.wait(timeout_s) and not self._unavailable

    def close(self) -> None:
        """Stop the dispatcher and the worker; later calls are answered ``unavailable``."""
        if self._closed:
            return
        self._closed = True
        self._drain("unavailable", "the worker is closed")
        with contextlib.suppress(queue.Full):  # a full queue means the dispatcher is busy and will see _closed
            self._queue.put_nowait(None)
        self._dispatcher.join(self._config.timeout_s + _STOP_JOIN_S)
        self._drain("unavailable", "the worker is closed")
        self._stop_child(graceful=True)

    # ------------------------------------------------------------------ dispatcher

    def _dispatch(self) -> None:
        """Feed requests to the worker one at a time until closed; answer first, then replace a broken worker."""
        while not self._closed and (request := self._queue.get()) is not None:
            if not request.begin():
                continue
            try:
                outcome, broken = self._serve(request)
            except Exception as exc:  # a bug here must not leave every later caller waiting on a dead thread
                logger.exception("%s: dispatching an inference failed", self._name)
                outcome, broken = Outcome(None, "error", f"dispatcher: {type(exc).__name__}: {exc}"), None
            request.finish(outcome)
            if broken is not None:
                self._restart(broken)

    def _serve(self, request: _Request) -> tuple[Outcome, str | None]:
        """Run one claimed request; also say why the worker must be replaced, if it must.

        A worker found dead when the request is sent (it died while idle) is
        replaced and the request sent once more: the model never saw it.
        """
        child = self._child or self._restart("no worker was running")
        if child is not None and child.process.poll() is not None:
            child = self._restart(f"the worker had exited with code {child.process.returncode}")
        if child is not None and not _send(child, request):
            child = self._restart("the worker was gone before the inference")
            if child is not None and not _send(child, request):
                detail = "a fresh worker did not take the request"
                return Outcome(None, "crashed", detail), detail
        if child is None:
            return Outcome(None, "unavailable", f"{self._name}: no worker could be started"), None
        return self._await(child, request)

    def _await(self, child: _Child, request: _Request) -> tuple[Outcome, str | None]:
        """Wait for the answer until the request's bound; a hung or dead worker must be replaced."""
        deadline = time.monotonic() + request.bound_s
        while (remaining := deadline - time.monotonic()) > 0:
            if not wait([child.connection], remaining):
                continue
            try:  # a dead worker's end of the socket closes, so its death reads as end of file
                answer, status, payload = child.connection.recv()
            except (EOFError, OSError):
                detail = "the worker died during the inference"
                return Outcome(None, "crashed", detail), detail
            if answer == request.number:
                return (Outcome(payload) if status == "ok" else Outcome(None, "error", str(payload))), None
        detail = f"an inference ran longer than {request.bound_s} s"
        return Outcome(None, "timeout", f"{detail}; the worker is replaced"), detail

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
                logger.warning("%s: worker start %d failed: %s", self._name, attempt + 1, exc)
                if attempt + 1 < self._config.max_start_failures:
                    time.sleep(min(_MAX_BACKOFF_S, 0.1 * 2**attempt))
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
        self._unavailable = True
        self._ready.set()
        self._emit("crash_loop", reason, {"failed_starts": self._config.max_start_failures})
        self._drain("unavailable", "no worker could be started")
        return None

    def _emit(self, kind: WorkerEventKind, reason: str, detail: Mapping[str, int | str | None]) -> None:
        logger.warning("%s: %s (%s) %s", self._name, kind, reason, dict(detail))
        if self._on_event is not None:
            self._on_event(kind, reason, detail)

    def _drain(self, failure: FailureKind, detail: str) -> None:
        """Answer every queued request with ``failure``."""
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                return
            if request is not None and request.begin():
                request.finish(Outcome(None, failure, detail))

    # ------------------------------------------------------------------ processes

    def _start(self) -> _Child:
        """Start a worker process and wait until its model is loaded."""
        parent_end, child_end = socket.socketpair()
        with child_end:
            process = subprocess.Popen(  # noqa: S603 - this interpreter running this module; no shell, no user input
                [sys.executable, "-c", _CHILD_MAIN, str(child_end.fileno())],
                pass_fds=(child_end.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        child = _Child(process, Connection(parent_end.detach()))
        try:
            child.connection.send((self._runtime, self._model_path, self._config))
            ready = wait([child.connection], self._config.start_timeout_s)
            status, payload = child.connection.recv() if ready else ("late", None)
        except (EOFError, OSError):
            msg = f"the worker exited with code {child.kill()} while starting"
            raise _StartError(msg) from None
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


def _send(child: _Child, request: _Request) -> bool:
    """Hand a request to the worker; ``False`` when its end of the socket is gone."""
    try:
        child.connection.send((request.number, request.inputs))
    except OSError:
        return False
    return True


# ------------------------------------------------------------------ inside the worker process


def main(fd: int) -> None:
    """Worker process entry point: serve the parent on the connection at file descriptor ``fd``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when a worker ends, not a terminal's Ctrl-C
    _exit_with_parent()
    connection = Connection(fd)
    try:
        runtime, model_path, config = connection.recv()
    except (EOFError, OSError):
        return
    serve(connection, runtime, model_path, config)


def serve(connection: Connection, runtime: RuntimeFactory, model_path: Path, config: RuntimeConfig) -> None:
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
            try:
                connection.send((number, "ok", engine.run(inputs)))
            except Exception as exc:  # noqa: BLE001 - the runtime's error goes back to the caller as text
                connection.send((number, "error", f"{type(exc).__name__}: {exc}"))
    finally:
        engine.close()


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
