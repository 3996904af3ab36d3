"""`TraceStoreProcessor`: feeds ended spans to the `TraceStore` off the request path.

`on_end` runs on the thread that ended the span — a request's — so it only appends to a
bounded in-memory queue (a few microseconds under a lock that is never held across I/O) and
never blocks or raises. When the queue is full the *new* span is dropped and counted: the
spans already queued are older and their traces more likely complete. One writer thread
takes batches of up to `max_batch` spans, as soon as a batch is full or when the oldest queued
span has waited `flush_interval`, and writes each batch in one store transaction.

Data loss
    At ``kill -9`` (or any crash) what is lost is exactly what was queued and not yet
    committed: while the writer keeps up that is at most one flush interval's worth of spans
    (0.2 s by default) or one batch (512), whichever comes first, plus the batch being written
    (a transaction rolls back whole; SQLite never keeps half a batch). Under sustained overload
    — spans ending faster than the disk takes them — the queue fills, so the bound is the
    queue's `capacity`, and the excess is dropped and counted before any crash. A clean
    `shutdown` (the SDK calls it at interpreter exit) drains the queue, bounded by
    `shutdown_timeout`.

Failures
    A batch the store rejects (disk full, corrupt file …) is discarded — retrying would stall
    the queue behind a disk that may never recover — and counted in `write_errors` (attempts)
    and `failed` (spans). Each distinct error is logged once, so a full disk does not flood
    the log it may share.

Store unavailable
    A store whose database cannot be reached raises `TraceStoreUnavailable`: the batch is kept,
    not counted failed, and retried after a pause that doubles from 0.1 s to 5 s (shutdown cuts
    it short). Meanwhile `on_end` keeps queueing up to `capacity` and drops (and counts) what
    is beyond, as under overload, so an outage loses the newest spans, not the queued ones.
    One WARNING when the store becomes unavailable and one INFO when writes resume, however
    many retries lie between. A `force_flush` during an outage returns False at its timeout; a
    `shutdown` retries until its drain deadline and counts whatever is still held as dropped.

Counters (cumulative, for the metrics catalog): `queued` (accepted into the queue),
`written` (committed by the store), `dropped` (queue full, ended after shutdown, or left when
the shutdown drain timed out), `failed` (in a failed batch), `write_errors` (failed batches).
Every span handed to `on_end` ends up in exactly one of written/dropped/failed, or is pending.
The processor does not own the store: its owner closes it after `shutdown`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Final, Protocol

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from gateway.telemetry.trace_store import TraceStoreUnavailable

__all__ = ["SpanWriter", "TraceStoreProcessor"]

_log = logging.getLogger(__name__)

# Distinct error messages remembered for log de-duplication; messages that embed varying
# detail must not grow the set without bound.
_MAX_REMEMBERED_ERRORS: Final = 64

# Pause before retrying a batch while the store is unavailable: doubles from the first to the
# last, so an outage costs a few attempts a minute, and a short blip about 0.1 s of delay.
_RETRY_FIRST_SECONDS: Final = 0.1
_RETRY_MAX_SECONDS: Final = 5.0


class SpanWriter(Protocol):
    """What the processor needs of a store (any `TraceStore`)."""

    def write(self, spans: Sequence[ReadableSpan]) -> int: ...


class TraceStoreProcessor(SpanProcessor):
    """Queues ended spans and writes them to a store in batches on its own thread."""

    def __init__(
        self,
        store: SpanWriter,
        *,
        capacity: int = 10_000,
        max_batch: int = 512,
        flush_interval: float = 0.2,
        shutdown_timeout: float = 5.0,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity: must be at least 1, got {capacity}")
        if max_batch < 1:
            raise ValueError(f"max_batch: must be at least 1, got {max_batch}")
        if not flush_interval > 0:
            raise ValueError(f"flush_interval: must be positive, got {flush_interval}")
        if not shutdown_timeout >= 0:
            raise ValueError(f"shutdown_timeout: must not be negative, got {shutdown_timeout}")
        self._store = store
        self._capacity = capacity
        self._max_batch = max_batch
        self._flush_interval = flush_interval
        self._shutdown_timeout = shutdown_timeout

        self._lock = threading.Lock()
        # Two conditions on one lock: `on_end` wakes only the writer (a plain notify could
        # otherwise land on a waiting force_flush), and the writer wakes every flusher.
        self._work = threading.Condition(self._lock)
        self._done = threading.Condition(self._lock)
        self._queue: deque[ReadableSpan] = deque()
        self._oldest_at = 0.0  # monotonic time the oldest queued span was queued

        # Sequence numbers over accepted spans: force_flush waits for `_finished_seq` to
        # reach the `_queued` it saw; `_flush_to` asks the writer not to wait for a full batch.
        self._queued = 0
        self._finished_seq = 0
        self._flush_to = 0
        self._stopping = False
        self._drain_deadline = 0.0

        self._written = 0
        self._dropped = 0
        self._failed = 0
        self._write_errors = 0
        self._logged_errors: set[str] = set()
        # Monotonic time the store became unavailable; 0 while it is available.
        self._unavailable_since = 0.0

        # A daemon so a provider nobody shuts down cannot hang interpreter exit; the SDK's
        # atexit shutdown still drains it in the normal case.
        self._thread = threading.Thread(
            target=self._run, name="aigw-trace-store-writer", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------------ counters

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def written(self) -> int:
        return self._written

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def failed(self) -> int:
        return self._failed

    @property
    def write_errors(self) -> int:
        return self._write_errors

    @property
    def pending(self) -> int:
        """Spans queued and not yet handed to the store."""
        return len(self._queue)

    # ------------------------------------------------------------------ SpanProcessor

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        try:
            with self._lock:
                if self._stopping or len(self._queue) >= self._capacity:
                    self._dropped += 1
                    return
                self._queue.append(span)
                self._queued += 1
                depth = len(self._queue)
                if depth == 1:
                    self._oldest_at = time.monotonic()
                # Only the transitions the writer waits for: first span (start the flush
                # timer) and a full batch (write now). Anything else would wake it per span.
                if depth == 1 or depth == self._max_batch:
                    self._work.notify()
        except Exception:  # must never raise into the SDK
            self._dropped += 1

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Wait until every span queued before the call is handed to the store.

        False on timeout, or when a batch failed to write meanwhile (conservatively: the
        failed batch may have held only later spans).
        """
        deadline = time.monotonic() + max(timeout_millis, 0) / 1000
        with self._lock:
            target = self._queued
            errors_before = self._write_errors
            if self._finished_seq < target:
                self._flush_to = max(self._flush_to, target)
                self._work.notify()
            while self._finished_seq < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._done.wait(remaining)
            return self._write_errors == errors_before

    def shutdown(self) -> None:
        """Stop accepting spans, drain the queue (bounded by `shutdown_timeout`), stop the
        writer. Safe to call more than once; does not close the store."""
        with self._lock:
            if not self._stopping:
                self._stopping = True
                self._drain_deadline = time.monotonic() + self._shutdown_timeout
                self._work.notify()
        if threading.current_thread() is not self._thread:
            # The drain deadline bounds the queue and the retries; the extra second is for a
            # write already in progress (SQLite's busy timeout caps its wait on a lock; one to
            # a database that stopped answering mid-statement can outlast it, and is left to
            # its own timeouts on this daemon thread).
            self._thread.join(self._shutdown_timeout + 1.0)
            if self._thread.is_alive():
                _log.warning(
                    "trace store writer did not stop within %.1f s; %d span(s) still queued",
                    self._shutdown_timeout,
                    len(self._queue),
                )

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        while True:
            with self._lock:
                batch = self._next_batch()
                if batch is None:
                    return
            self._write(batch)

    def _next_batch(self) -> list[ReadableSpan] | None:
        """Wait (holding the lock) until a batch is due; None when the writer should exit."""
        while True:
            depth = len(self._queue)
            if self._stopping:
                if depth == 0:
                    return None
                if time.monotonic() >= self._drain_deadline:
                    # Out of drain time: what is left is lost; say so in the counters.
                    self._dropped += depth
                    self._finish(depth)
                    self._queue.clear()
                    return None
                break
            if depth == 0:
                self._work.wait()
                continue
            if depth >= self._max_batch or self._flush_to > self._finished_seq:
                break
            wait = self._oldest_at + self._flush_interval - time.monotonic()
            if wait <= 0:
                break
            self._work.wait(wait)
        take = min(len(self._queue), self._max_batch)
        batch = [self._queue.popleft() for _ in range(take)]
        if self._queue:
            # Restart the flush timer for what is left: written at once if it already fills a
            # batch, else within one more interval (so a span waits at most about one
            # interval plus the write in progress).
            self._oldest_at = time.monotonic()
        return batch

    def _write(self, batch: list[ReadableSpan]) -> None:
        written = 0
        error: Exception | None = None
        retry_in = _RETRY_FIRST_SECONDS
        while True:
            try:
                written = self._store.write(batch)
            except TraceStoreUnavailable as exc:
                self._note_unavailable(exc, len(batch))
                if self._pause(retry_in):
                    retry_in = min(retry_in * 2, _RETRY_MAX_SECONDS)
                    continue
                # Out of drain time at shutdown: the batch is lost, like the queue behind it.
                with self._lock:
                    self._dropped += len(batch)
                    self._finish(len(batch))
                return
            except Exception as exc:  # a failed batch must not kill the writer
                error = exc
                # Before `_finish`, so a force_flush that sees the failure also sees it logged;
                # outside the lock, so a slow log handler cannot stall `on_end`.
                self._log_once(exc, len(batch))
            break
        if self._unavailable_since:
            # The store answered (even a rejection means its database is back).
            _log.info(
                "trace store available again after %.1f s; writes resumed",
                time.monotonic() - self._unavailable_since,
            )
            self._unavailable_since = 0.0
        with self._lock:
            if error is None:
                self._written += written
            else:
                self._write_errors += 1
                self._failed += len(batch)
            self._finish(len(batch))

    def _note_unavailable(self, error: Exception, held: int) -> None:
        # Writer thread only. Once per outage: every retry would flood the log.
        if self._unavailable_since:
            return
        self._unavailable_since = time.monotonic()
        _log.warning(
            "trace store unavailable, holding %d span(s) and retrying with backoff (new spans "
            "queue up to %d, beyond which they are dropped and counted): %s",
            held + len(self._queue),
            self._capacity,
            error,
        )

    def _pause(self, seconds: float) -> bool:
        """Wait `seconds` before a retry; True to retry, False when shutdown's drain deadline
        has passed (give up). Shutdown starting during the pause ends it at once (one last
        prompt attempt), and no pause runs past the drain deadline."""
        until = time.monotonic() + seconds
        with self._lock:
            was_stopping = self._stopping
            while True:
                now = time.monotonic()
                if self._stopping:
                    if now >= self._drain_deadline:
                        return False
                    if not was_stopping:
                        return True
                    until = min(until, self._drain_deadline)
                if now >= until:
                    return True
                # on_end and force_flush notify this condition too; those wake-ups just loop:
                # only shutdown shortens the pause.
                self._work.wait(until - now)

    def _finish(self, count: int) -> None:
        # Caller holds the lock.
        self._finished_seq += count
        self._done.notify_all()

    def _log_once(self, error: Exception, lost: int) -> None:
        key = f"{type(error).__name__}: {error}"
        if key in self._logged_errors:
            return
        if len(self._logged_errors) < _MAX_REMEMBERED_ERRORS:
            self._logged_errors.add(key)
        _log.error(
            "trace store write failed, %d span(s) discarded (logged once per distinct error; "
            "see the trace store counters for the total): %s",
            lost,
            key,
        )
