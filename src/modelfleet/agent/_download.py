"""Bundle downloads that survive flaky links, slow peers and full disks.

A download lands in ``<dir>/<sha256>.partial``, resumes with an HTTP ``Range``
request, and becomes ``<sha256>.mfb`` only once its sha256 matches. Every input from
the peer is bounded: a total deadline, a read timeout (a stall), a minimum average
throughput over a sliding window (a trickle: TUF does not defend against slow
retrieval), never more bytes than declared, and free space checked before and during
the transfer. A partial file that ends corrupt after a resume is deleted and fetched
once more from zero. Retries wait with exponential backoff and *full* jitter, which is
not clamped at the cap, so a fleet coming back from an outage spreads out instead of
retrying in lockstep.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import BinaryIO

from modelfleet._closing import Closeable
from modelfleet.agent._failures import disk_failure, http_failure
from modelfleet.agent._http import ClientTimeouts, ExchangeError, HttpClient, Response
from modelfleet.agent._slots import fsync_dir
from modelfleet.clock import Clock, SystemClock
from modelfleet.errors import BadDataError, ConfigError, TransportError

__all__ = ["DownloadPolicy", "Downloader", "FreeSpace", "Progress", "backoff_delay", "disk_free"]

logger = logging.getLogger(__name__)

FreeSpace = Callable[[Path], int]
"""Bytes a process may still write in the file system holding a path (``os.statvfs``-like)."""

Progress = Callable[[int], None]
"""Told how many bytes of a download are on disk."""

_KIB = 1024
# Not ``proxy_auth``: a proxy that wants other credentials (407) refuses every retry the same way.
_RETRYABLE = frozenset(
    {"connection", "connect_timeout", "proxy", "stalled", "too_slow", "short_body", "range"}
    | {"http_408", "http_429", "http_5xx"}
)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_HTTP_OK, _HTTP_PARTIAL, _HTTP_RANGE_NOT_SATISFIABLE = 200, 206, 416


def _no_progress(done: int) -> None:
    """Progress sink for callers that do not watch."""


def disk_free(path: Path) -> int:
    """Free bytes available to unprivileged writers in the file system holding ``path``."""
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


def backoff_delay(attempt: int, rng: random.Random, base_s: float, cap_s: float) -> float:
    """Full jitter: uniform in ``[0, min(cap, base * 2**attempt)]`` (AWS architecture blog)."""
    return rng.uniform(0.0, min(cap_s, base_s * 2.0 ** min(attempt, 64)))


@dataclass(frozen=True, slots=True, kw_only=True)
class DownloadPolicy:
    """Bounds of one download.

    Attributes:
        deadline_s: total time for a download, retries and waits included.
        connect_timeout_s: time to open a connection.
        read_timeout_s: longest silence from the peer before the attempt is a stall.
        min_bytes_per_s: abort an attempt whose average rate over ``window_s`` is lower.
        window_s: the sliding window of the throughput check.
        space_margin: free space needed before starting is ``size * margin`` minus what is
            already on disk (the margin covers extraction next to the download).
        space_check_bytes: check free space again after this many bytes.
        max_retries: retries after the first attempt.
        backoff_base_s: first backoff ceiling; it doubles per retry.
        backoff_cap_s: largest backoff ceiling.
        head_bytes: first request size for the bundle header probe.
    """

    deadline_s: float = 900.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    min_bytes_per_s: float = 4 * _KIB
    window_s: float = 30.0
    space_margin: float = 2.0
    space_check_bytes: int = 1024 * _KIB
    max_retries: int = 6
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 600.0
    head_bytes: int = 64 * _KIB

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            low = 0 if item.name in {"max_retries", "min_bytes_per_s"} else 1e-9
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < low:
                msg = f"download setting {item.name} must be a finite number >= {low:g}, got {value!r}"
                raise ConfigError(msg, code="bad_setting")
        if self.space_margin < 1:
            msg = f"space_margin must be at least 1, got {self.space_margin}"
            raise ConfigError(msg, code="bad_setting")


class _Throughput:
    """Average rate over a sliding window; raises when it falls below the minimum."""

    def __init__(self, policy: DownloadPolicy, clock: Clock) -> None:
        self._policy = policy
        self._clock = clock
        self._start = clock.monotonic()
        self._samples: collections.deque[tuple[float, int]] = collections.deque([(self._start, 0)])
        self._total = 0

    def add(self, count: int) -> None:
        """Record ``count`` bytes received now and check the window."""
        now = self._clock.monotonic()
        self._total += count
        self._samples.append((now, self._total))
        while len(self._samples) > 1 and self._samples[1][0] <= now - self._policy.window_s:
            self._samples.popleft()
        self.check(now)

    def check(self, now: float) -> None:
        """Raise once a full window has passed at a rate below the minimum."""
        if now - self._start < self._policy.window_s:
            return
        since, base = self._samples[0]
        rate = (self._total - base) / max(now - since, 1e-9)
        if rate < self._policy.min_bytes_per_s:
            msg = f"download too slow: {rate:.0f} B/s over {now - since:.1f} s, need {self._policy.min_bytes_per_s:.0f}"
            raise TransportError(msg, code="too_slow")


@dataclass(slots=True)
class _Transfer:
    """One download in progress: where it goes, what it must be, when it must end."""

    url: str
    partial: Path
    size: int
    needed: int
    deadline: float
    progress: Progress


class Downloader(Closeable):
    """Fetches bundles over HTTP with resume, deadlines, throughput and space checks.

    Args:
        policy: the bounds.
        client: the HTTP client (credential, connections); one is made when ``None``.
        rng: randomness of the backoff jitter; seed it for exact tests.
        clock: monotonic time for deadlines and throughput.
        sleep: how to wait between retries.
        free_space: free-space provider (``os.statvfs`` by default).
    """

    def __init__(
        self,
        policy: DownloadPolicy | None = None,
        *,
        client: HttpClient | None = None,
        rng: random.Random | None = None,
        clock: Clock | None = None,
        sleep: Callable[[float], None] = time.sleep,
        free_space: FreeSpace = disk_free,
    ) -> None:
        self.policy = policy or DownloadPolicy()
        self._own_client = client is None
        self._client = client or HttpClient()
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._clock = clock or SystemClock()
        self._sleep = sleep
        self._free_space = free_space

    def close(self) -> None:
        """Close the HTTP client if this downloader made it."""
        if self._own_client:
            self._client.close()

    # ------------------------------------------------------------ public

    def fetch(self, url: str, directory: Path, *, sha256: str, size: int, progress: Progress | None = None) -> Path:
        """Download ``url`` into ``directory/<sha256>.mfb`` (resuming a partial file); idempotent.

        ``progress`` is told the bytes on disk after each chunk (written through to the kernel).

        Raises:
            TransportError: the transfer failed for good (code ``no_space``, ``deadline``,
                ``too_slow``, ``stalled``, ``connection``, ``proxy``, ``proxy_auth``, ``http_<status>`` ...).
            BadDataError: the peer sent more bytes than declared (``oversized``), a wrong
                ``Content-Range`` (``bad_range``), or bytes with another sha256 (``hash_mismatch``).
        """
        final = directory / f"{sha256}.mfb"
        if final.is_file() and _sha256_of(final) == sha256:
            return final
        final.unlink(missing_ok=True)
        transfer = _Transfer(
            url,
            directory / f"{sha256}.partial",
            size,
            math.ceil(size * self.policy.space_margin),
            self._deadline(),
            progress or _no_progress,
        )
        for _ in range(2):  # at most one restart from zero after a resumed download ends corrupt
            resumed = self._fill(transfer)
            if _sha256_of(transfer.partial) == sha256:
                transfer.partial.replace(final)
                fsync_dir(directory)
                return final
            transfer.partial.unlink(missing_ok=True)
            if not resumed:
                break
            logger.warning("resumed download of %s ended corrupt; fetching it again from zero", url)
        msg = f"{url}: downloaded bytes do not hash to the assigned sha256 {sha256[:16]}…"
        raise BadDataError(msg, code="hash_mismatch")

    def fetch_head(self, url: str, count: int) -> bytes:
        """The first ``count`` bytes of ``url`` (a ``Range`` request), to check a bundle header before the payload.

        Raises:
            TransportError: as :meth:`fetch`.
        """
        deadline = self._deadline()
        for attempt in range(self.policy.max_retries + 1):
            try:
                return self._head_once(url, count, deadline)
            except TransportError as exc:
                self._wait_retry(exc, attempt, deadline)
        raise AssertionError  # pragma: no cover - _wait_retry raises on the last attempt

    # ------------------------------------------------------------ retries

    def _deadline(self) -> float:
        return self._clock.monotonic() + self.policy.deadline_s

    def _wait_retry(self, error: TransportError, attempt: int, deadline: float) -> None:
        """Sleep before the next attempt, or raise ``error`` when no retry is left."""
        if error.code not in _RETRYABLE or attempt >= self.policy.max_retries:
            raise error
        delay = backoff_delay(attempt, self._rng, self.policy.backoff_base_s, self.policy.backoff_cap_s)
        if self._clock.monotonic() + delay >= deadline:
            msg = f"download deadline of {self.policy.deadline_s:g} s reached ({error})"
            raise TransportError(msg, code="deadline") from error
        logger.info("download attempt %d failed (%s); retrying in %.2f s", attempt + 1, error.code, delay)
        self._sleep(delay)

    def _fill(self, transfer: _Transfer) -> bool:
        """Bring the partial file to its full size, retrying; return whether any attempt resumed."""
        resumed = False
        for attempt in range(self.policy.max_retries + 1):
            have = _size_of(transfer.partial)
            resumed |= have > 0
            try:
                self._attempt(transfer, have)
            except TransportError as exc:
                self._wait_retry(exc, attempt, transfer.deadline)
            else:
                return resumed
        raise AssertionError  # pragma: no cover - _wait_retry raises on the last attempt

    # ------------------------------------------------------------ one attempt

    def _attempt(self, transfer: _Transfer, have: int) -> None:
        """One HTTP request continuing at byte ``have``; failures become modelfleet errors."""
        if have >= transfer.size:
            if have == transfer.size:
                return
            transfer.partial.unlink()
            have = 0
        self._check_space(transfer, have)
        headers = {"Range": f"bytes={have}-"} if have else {}
        bounds = self._bounds(transfer.deadline)
        try:
            with self._client.request("GET", transfer.url, headers=headers, timeouts=bounds) as reply:
                start = self._start_of(reply, transfer, have)
                self._receive(reply, transfer, start)
        except ExchangeError as exc:
            raise http_failure(transfer.url, exc, timeout_code="stalled") from None
        except OSError as exc:
            message, code = disk_failure(exc)
            if code != "no_space":
                raise
            transfer.partial.unlink(missing_ok=True)
            msg = f"{message} while downloading {transfer.url}"
            raise TransportError(msg, code=code) from None

    def _bounds(self, deadline: float) -> ClientTimeouts:
        """Connect and read bounds, neither past ``deadline``."""
        remaining = max(deadline - self._clock.monotonic(), 0.001)
        return ClientTimeouts(
            connect_s=min(self.policy.connect_timeout_s, remaining), read_s=min(self.policy.read_timeout_s, remaining)
        )

    def _start_of(self, reply: Response, transfer: _Transfer, have: int) -> int:
        """Where the body starts in the file, from the status and ``Content-Range``."""
        status = reply.status_code
        if status == _HTTP_PARTIAL and have:
            start = _content_range_start(reply, transfer.size, transfer.url)
            if start != have:
                msg = f"{transfer.url}: asked for bytes from {have}, got a range from {start}"
                raise BadDataError(msg, code="bad_range")
            return have
        if status in {_HTTP_OK, _HTTP_PARTIAL}:
            return 0
        if status == _HTTP_RANGE_NOT_SATISFIABLE:
            transfer.partial.unlink(missing_ok=True)
            msg = f"{transfer.url}: range from {have} not satisfiable"
            raise TransportError(msg, code="range")
        raise _status_error(transfer.url, status)

    def _receive(self, reply: Response, transfer: _Transfer, start: int) -> None:
        """Stream the body into the partial file from ``start``, enforcing every bound."""
        declared = reply.header("content-length")
        if declared is not None and declared.isdigit() and start + int(declared) > transfer.size:
            self._refuse_oversized(transfer, start + int(declared))
        meter = _Throughput(self.policy, self._clock)
        with _open_at(transfer.partial, start) as sink:
            written, unchecked = start, 0
            for chunk in reply.iter_bytes():
                if written + len(chunk) > transfer.size:
                    self._refuse_oversized(transfer, written + len(chunk))
                sink.write(chunk)
                sink.flush()
                written += len(chunk)
                transfer.progress(written)
                unchecked += len(chunk)
                meter.add(len(chunk))
                self._check_deadline(transfer)
                if unchecked >= self.policy.space_check_bytes:
                    unchecked = 0
                    self._check_space(transfer, written)
            sink.flush()
            os.fsync(sink.fileno())
        if written < transfer.size:
            msg = f"{transfer.url}: body ended at byte {written} of {transfer.size}"
            raise TransportError(msg, code="short_body")

    def _refuse_oversized(self, transfer: _Transfer, seen: int) -> None:
        transfer.partial.unlink(missing_ok=True)
        msg = f"{transfer.url}: the peer sends {seen} bytes or more; {transfer.size} were declared"
        raise BadDataError(msg, code="oversized")

    def _check_deadline(self, transfer: _Transfer) -> None:
        if self._clock.monotonic() > transfer.deadline:
            msg = f"download deadline of {self.policy.deadline_s:g} s reached for {transfer.url}"
            raise TransportError(msg, code="deadline")

    def _check_space(self, transfer: _Transfer, have: int) -> None:
        """Enough room for the rest of the download and the extraction beside it, or no start at all."""
        needed = transfer.needed - have
        free = self._free_space(transfer.partial.parent)
        if free < needed:
            transfer.partial.unlink(missing_ok=True)  # a partial file on a full disk blocks every retry
            msg = f"not enough free space for {transfer.url}: {free} bytes free, {needed} needed"
            raise TransportError(msg, code="no_space")

    def _head_once(self, url: str, count: int, deadline: float) -> bytes:
        """One ranged request for the first ``count`` bytes."""
        data = bytearray()
        meter = _Throughput(self.policy, self._clock)
        try:
            with self._client.request("GET", url, headers=_head_range(count), timeouts=self._bounds(deadline)) as reply:
                if reply.status_code not in {_HTTP_OK, _HTTP_PARTIAL}:
                    raise _status_error(url, reply.status_code)
                for chunk in reply.iter_bytes():
                    data += chunk
                    if len(data) >= count:
                        break
                    meter.add(len(chunk))
                    if self._clock.monotonic() > deadline:
                        msg = f"download deadline of {self.policy.deadline_s:g} s reached for {url}"
                        raise TransportError(msg, code="deadline")
        except ExchangeError as exc:
            raise http_failure(url, exc, timeout_code="stalled") from None
        return bytes(data[:count])


def _head_range(count: int) -> Mapping[str, str]:
    return {"Range": f"bytes=0-{count - 1}"}


def _status_error(url: str, status: int) -> TransportError:
    """A refusal by HTTP status; 5xx, 408 and 429 may be retried, other 4xx are final."""
    code = "http_5xx" if status >= 500 else f"http_{status}"  # noqa: PLR2004 - HTTP server error class
    return TransportError(f"{url}: HTTP {status}", code=code)


def _content_range_start(reply: Response, size: int, url: str) -> int:
    """The first byte of a 206 body; the total must be the declared size."""
    match = _CONTENT_RANGE.match(reply.header("content-range") or "")
    if match is None:
        msg = f"{url}: 206 without a usable Content-Range"
        raise BadDataError(msg, code="bad_range")
    total = match.group(3)
    if total != "*" and int(total) != size:
        msg = f"{url}: the peer's file is {total} bytes; {size} were declared"
        raise BadDataError(msg, code="bad_range")
    return int(match.group(1))


@contextlib.contextmanager
def _open_at(path: Path, start: int) -> Iterator[BinaryIO]:
    """Open the partial file for writing at ``start`` (truncating anything after it)."""
    with path.open("r+b" if start else "wb") as handle:
        handle.seek(start)
        handle.truncate(start)
        yield handle


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _sha256_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
