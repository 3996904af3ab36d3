"""OTLP span export that can be re-pointed at runtime without losing or repeating a span.

One `SpanExportProcessor` lives as long as the process; what changes is the exporter it feeds.
Why not the SDK's BatchSpanProcessor: `TracerProvider` cannot remove a processor, replacing
whole processors loses spans handed to one that is shutting down, and the SDK's batcher neither
counts its drops nor honours a flush timeout. This processor:

- never blocks or throws in `on_end` (the request path): a full queue drops the span and counts
  it (`aigw.telemetry.spans.dropped{reason="queue_full"}`). Drops count losses only: a span that
  ends while export is off was never going to be exported and is not counted (a gateway that
  never enabled export shows 0 dropped); a span queued for export that is then left with no
  exporter to take it counts `export_disabled`;
- exports batches from one worker thread (the gateway's one `BatchWorker`: queue, size/time
  flush, drain deadline); `swap()` replaces the exporter at once (a reference
  assignment) and the worker shuts the old one down only after its in-flight batch is done, so a
  batch is never cut off mid-request and sent again;
- re-sends through the new exporter a batch that failed on an exporter retired during the
  export (the backend was switched away from while it was failing);
- on disable, delivers what was queued before the switch to the old exporter, then retires it;
- `force_flush` and `shutdown` honour their deadlines.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from gateway.telemetry.batch_worker import BatchWorker
from gateway.telemetry.export_outcome import ExportOutcome, reported_outcome
from gateway.telemetry.export_stats import ExportStats

__all__ = ["SpanExportProcessor"]

_log = logging.getLogger(__name__)


class SpanExportProcessor(SpanProcessor):
    def __init__(
        self,
        stats: ExportStats,
        *,
        max_queue_size: int = 8192,
        max_batch_size: int = 512,
        schedule_delay: float = 1.0,
    ) -> None:
        self._stats = stats
        if not stats.signal:
            stats.signal = "traces"
        self._lock = threading.Lock()
        self._exporter: SpanExporter | None = None
        # Export was switched off: the spans queued before (up to `_drain_until`, a position
        # in the queue's order) still go here, then it retires.
        self._draining: SpanExporter | None = None
        self._drain_until = 0
        self._retired: list[SpanExporter] = []
        self._worker: BatchWorker[ReadableSpan] = BatchWorker(
            "aigw-span-export",
            self._export_batch,
            capacity=max_queue_size,
            max_batch=max_batch_size,
            interval=schedule_delay,
        )
        self._worker.start()

    def swap(self, exporter: SpanExporter | None) -> None:
        """Point export at `exporter` (None: off). Instant; the old one retires in the worker."""
        if exporter is not None:
            self._stats.exporter_changed()
        with self._lock:
            old, self._exporter = self._exporter, exporter
            if exporter is not None and self._draining is not None:
                # Back on before the drain finished: the new exporter takes what is queued.
                self._retired.append(self._draining)
                self._draining = None
            if old is not None:
                if exporter is None and self._worker.done < self._worker.accepted:
                    if self._draining is not None:
                        self._retired.append(self._draining)
                    self._draining = old
                    self._drain_until = self._worker.accepted
                else:
                    self._retired.append(old)
        # Retired now, even with nothing queued (an empty batch is delivered).
        self._worker.wake()

    # --- SpanProcessor --------------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        if self._exporter is None:
            return  # export is off: not a loss
        if self._worker.stopping:
            self._stats.drop("shutdown")
        elif not self._worker.put(span):
            self._stats.drop("queue_full")

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._worker.flush(timeout_millis / 1000)

    def shutdown(self, timeout_millis: int = 30_000) -> None:
        """Export what is queued (bounded by the timeout), then stop; safe twice."""
        if self._worker.stopping:
            return
        self._worker.shutdown(time.monotonic() + timeout_millis / 1000)
        leftover = self._worker.dropped["shutdown"]
        if leftover:
            self._stats.drop("shutdown", leftover)
        with self._lock:
            exporters = [e for e in (self._exporter, self._draining, *self._retired) if e]
            self._exporter = self._draining = None
            self._retired = []
        for exporter in exporters:
            _shutdown_quietly(exporter)

    # --- worker ---------------------------------------------------------------------------------

    def _export_batch(self, batch: list[ReadableSpan]) -> None:
        first = self._worker.done  # this batch's position in the queue's order
        with self._lock:
            retired, self._retired = self._retired, []
            target = self._exporter
            if target is None and self._draining is not None:
                target = self._draining
                if first + len(batch) >= self._drain_until:
                    # This batch is the last of what was queued before export was switched off.
                    retired.append(self._draining)
                    self._draining = None
        for exporter in retired:
            if exporter is not target:
                _shutdown_quietly(exporter)
        if batch:
            self._export(batch, target)
        if target is not None and target in retired:
            _shutdown_quietly(target)

    def _export(self, batch: Sequence[ReadableSpan], exporter: SpanExporter | None) -> None:
        if exporter is None:
            # Queued for export, and no exporter (nor a draining one) is left to take it.
            self._stats.drop("export_disabled", len(batch))
            return
        outcome = self._send(exporter, batch)
        current = self._exporter
        if not outcome.success and current is not None and current is not exporter:
            # Switched away from a failing backend mid-export: the new one gets the batch.
            outcome = self._send(current, batch)
        self._stats.record(outcome, len(batch))

    @staticmethod
    def _send(exporter: SpanExporter, batch: Sequence[ReadableSpan]) -> ExportOutcome:
        try:
            result = exporter.export(batch)
        except Exception as e:  # an exporter bug must not kill the worker
            _log.exception("span exporter raised")
            return ExportOutcome(success=False, reason="unknown", message=type(e).__name__)
        return reported_outcome(exporter, result is SpanExportResult.SUCCESS)


def _shutdown_quietly(exporter: SpanExporter) -> None:
    try:
        exporter.shutdown()
    except Exception:
        _log.exception("shutting down a retired span exporter failed")
