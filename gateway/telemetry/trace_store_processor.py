"""`TraceStoreProcessor`: feeds ended spans to the `TraceStore` off the request path.

The queue, batching, retry and shutdown deadline are the gateway's one `BatchWorker`: `on_end`
only appends to its bounded queue and never blocks or raises. When the queue is full the *new*
span is dropped and counted: the spans already queued are older and their traces more likely
complete. One writer thread takes batches of up to `max_batch` spans, as soon as a batch is
full or at the latest every `flush_interval`, and writes each batch in one store transaction.
What is the store's own lives here: what a failed write means, and what is logged.

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
    it short; `BatchWorker` does the retrying). Meanwhile `on_end` keeps queueing up to
    `capacity` and drops (and counts) what is beyond, as under overload, so an outage loses
    the newest spans, not the queued ones.
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
from collections.abc import Sequence
from typing import Final, Protocol

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from gateway.telemetry.batch_worker import BatchWorker, DeliveryDeferred
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
        self._shutdown_timeout = shutdown_timeout
        self._written = 0
        self._failed = 0
        self._write_errors = 0
        self._logged_errors: set[str] = set()
        # Monotonic time the store became unavailable; 0 while it is available.
        self._unavailable_since = 0.0
        self._worker: BatchWorker[ReadableSpan] = BatchWorker(
            "aigw-trace-store-writer",
            self._write,
            capacity=capacity,
            max_batch=max_batch,
            interval=flush_interval,
            retry_first=_RETRY_FIRST_SECONDS,
            retry_max=_RETRY_MAX_SECONDS,
        )
        self._worker.start()

    # ------------------------------------------------------------------ counters

    @property
    def queued(self) -> int:
        return self._worker.accepted

    @property
    def written(self) -> int:
        return self._written

    @property
    def dropped(self) -> int:
        return sum(self._worker.dropped.values())

    @property
    def failed(self) -> int:
        return self._failed

    @property
    def write_errors(self) -> int:
        return self._write_errors

    @property
    def pending(self) -> int:
        """Spans queued and not yet handed to the store."""
        return self._worker.pending

    @property
    def _thread(self) -> threading.Thread | None:
        return self._worker.thread

    # ------------------------------------------------------------------ SpanProcessor

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        self._worker.put(span)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Wait until every span queued before the call is handed to the store.

        False on timeout, or when a batch failed to write meanwhile (conservatively: the
        failed batch may have held only later spans).
        """
        errors_before = self._write_errors
        done = self._worker.flush(max(timeout_millis, 0) / 1000)
        return done and self._write_errors == errors_before

    def shutdown(self) -> None:
        """Stop accepting spans, drain the queue (bounded by `shutdown_timeout`), stop the
        writer. Safe to call more than once; does not close the store."""
        self._worker.shutdown(time.monotonic() + self._shutdown_timeout)
        thread = self._worker.thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            # A write to a database that stopped answering mid-statement can outlast the
            # deadline; it is left to its own timeouts on this daemon thread.
            _log.warning(
                "trace store writer did not stop within %.1f s; %d span(s) still queued",
                self._shutdown_timeout,
                self._worker.pending,
            )

    # ------------------------------------------------------------------ writer thread

    def _write(self, batch: list[ReadableSpan]) -> None:
        try:
            written = self._store.write(batch)
        except TraceStoreUnavailable as exc:
            self._note_unavailable(exc, len(batch))
            raise DeliveryDeferred("store_unavailable", str(exc)) from None
        except Exception as exc:  # discarded: a retry would stall the queue behind the disk
            self._back_if_unavailable()
            self._log_once(exc, len(batch))
            self._write_errors += 1
            self._failed += len(batch)
            return
        self._back_if_unavailable()
        self._written += written

    def _note_unavailable(self, error: Exception, held: int) -> None:
        # Once per outage: every retry would flood the log.
        if self._unavailable_since:
            return
        self._unavailable_since = time.monotonic()
        _log.warning(
            "trace store unavailable, holding %d span(s) and retrying with backoff (new spans "
            "queue up to %d, beyond which they are dropped and counted): %s",
            held + self._worker.pending,
            self._worker.capacity,
            error,
        )

    def _back_if_unavailable(self) -> None:
        if self._unavailable_since:
            # The store answered (even a rejection means its database is back).
            _log.info(
                "trace store available again after %.1f s; writes resumed",
                time.monotonic() - self._unavailable_since,
            )
            self._unavailable_since = 0.0

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
