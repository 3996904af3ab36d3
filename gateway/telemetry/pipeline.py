"""The telemetry side: from call records to the trace store, `/metrics` and OTLP export.

    call records ─→ TelemetryIngest ─→ span processors ─→ TraceStoreProcessor → trace store
    (batches)                        │                 └→ OTLP span export (switchable exporter)
                                     └→ MetricInstruments → MeterProvider
                                          ─→ PrometheusMetricReader → /metrics (always on)
                                          └→ OTLP metric export (periodic reader)

Records arrive in batches: from this process's own serving side through `local` (a
`BatchWorker`; `recorder` is what that serving side records into), or from serving processes
through the telemetry process's intake (`gateway/processes/`). Either way nothing here runs on a
request's path.

Providers are per gateway instance, never the process-global ones: several gateways can run in
one process (the tests do) and nothing else in the process can add processors behind our back.
"""

from __future__ import annotations

import logging
import time

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SynchronousMultiSpanProcessor, TracerProvider
from opentelemetry.trace import Tracer
from prometheus_client import CollectorRegistry

from gateway import __version__
from gateway.config import TelemetryConfig
from gateway.redaction import REDACTOR
from gateway.telemetry.batch_worker import BatchWorker
from gateway.telemetry.catalog import CATALOG, histogram_views
from gateway.telemetry.control import ExportHealth
from gateway.telemetry.export_outcome import ExportOutcome
from gateway.telemetry.export_probe import probe_export
from gateway.telemetry.export_settings import ExporterSettings, OtelSettings
from gateway.telemetry.export_stats import ExportStats
from gateway.telemetry.ingest import TelemetryIngest
from gateway.telemetry.metric_export import MetricExport
from gateway.telemetry.metrics import MetricInstruments
from gateway.telemetry.otlp_exporters import build_metric_exporter, build_span_exporter
from gateway.telemetry.recorder import CallRecorder
from gateway.telemetry.span_export import SpanExportProcessor
from gateway.telemetry.trace_store import TraceStore
from gateway.telemetry.trace_store_processor import TraceStoreProcessor

__all__ = ["Telemetry"]

_log = logging.getLogger(__name__)

_SWITCH_FLUSH_SECONDS = 1.0


class Telemetry:
    def __init__(self, config: TelemetryConfig, store: TraceStore, resource: Resource) -> None:
        """`store` is owned from here on: `shutdown` closes it."""
        self.resource = resource
        self.store = store
        self.store_processor = TraceStoreProcessor(self.store)
        self.trace_stats = ExportStats()
        self.span_export = SpanExportProcessor(self.trace_stats)
        self.processors = SynchronousMultiSpanProcessor()
        self.processors.add_span_processor(self.store_processor)
        self.processors.add_span_processor(self.span_export)
        # Spans made with the SDK (none on the request path) reach the same processors.
        self.tracer_provider = TracerProvider(
            resource=self.resource, active_span_processor=self.processors
        )

        self.registry = CollectorRegistry(auto_describe=True)
        self.prometheus_reader = PrometheusMetricReader(
            scope_info_enabled=False, registry=self.registry
        )
        self.meter_provider = MeterProvider(
            # Exemplars would be offered every measurement, and /metrics drops them anyway.
            exemplar_filter=AlwaysOffExemplarFilter(),
            resource=self.resource,
            metric_readers=[self.prometheus_reader],
            views=histogram_views(),
        )
        self.instruments = instruments = MetricInstruments(
            self.meter_provider.get_meter("aigw", __version__), active=lambda: self.ingest.active()
        )
        self.ingest = TelemetryIngest(resource, self.processors, instruments)
        instruments.observe(CATALOG.TRACE_STORE_SPANS, self._store_counts)
        self.metric_stats = ExportStats()
        self.metric_export = MetricExport(self.meter_provider, self.metric_stats)
        instruments.observe(CATALOG.SPANS_EXPORTED, self.trace_stats.results)
        instruments.observe(CATALOG.SPANS_DROPPED, self.trace_stats.dropped)
        instruments.observe(CATALOG.METRIC_EXPORTS, self.metric_stats.attempts)
        instruments.observe(CATALOG.RECORDS_DROPPED, self.ingest.dropped)
        self.restarts: dict[tuple[str, ...], int] = {}
        instruments.observe(CATALOG.PROCESS_RESTARTS, lambda: self.restarts)
        self.settings = OtelSettings()
        self.tracer: Tracer = self.tracer_provider.get_tracer("aigw", __version__)
        # This process's own serving side, when it has one (one-process mode, the tests).
        self.local: BatchWorker[tuple[object, ...]] = BatchWorker(
            "aigw-telemetry-records", self.ingest.take
        )
        self.recorder = CallRecorder(config, self.local.put)
        self.ingest.report("local", self.recorder.metrics.active, self.local.dropped)
        self._closed = False

    def start(self) -> None:
        """Take this process's own call records (`recorder`); a telemetry process whose
        records all come from serving processes never starts it, and `local` stays idle."""
        self.local.start()

    def _store_counts(self) -> dict[tuple[str, ...], int]:
        p = self.store_processor
        return {
            ("written",): p.written,
            ("evicted",): self.store.evicted,
            ("dropped",): p.dropped,
            ("failed",): p.failed,
        }

    # --- TelemetryControl: what admin/ may use ---------------------------------------------

    @property
    def traces(self) -> TraceStore:
        return self.store

    def flush_traces(self, timeout: float) -> bool:
        now = time.monotonic()
        deadline = now + timeout
        # Each step runs even when one before it timed out: what did arrive is stored.
        settled = self.ingest.settle(now, timeout)
        local = self.local.flush(deadline - time.monotonic())
        return self.store_processor.force_flush(_ms_left(deadline)) and settled and local

    def force_flush(self, timeout: float) -> bool:
        """Every call recorded so far stored and exported (or failed), within `timeout` s."""
        deadline = time.monotonic() + timeout
        return self.local.flush(timeout) and self.tracer_provider.force_flush(_ms_left(deadline))

    def flush_metrics(self, timeout: float) -> bool:
        """Every call recorded so far measured and one OTLP metric export done, in `timeout` s."""
        deadline = time.monotonic() + timeout
        return self.local.flush(timeout) and self.metric_export.force_flush(_ms_left(deadline))

    def health(self) -> ExportHealth:
        return ExportHealth(
            traces=self.trace_stats.snapshot(), metrics=self.metric_stats.snapshot()
        )

    def test_export(self, section: str, settings: ExporterSettings) -> tuple[ExportOutcome, float]:
        return probe_export(section, settings, self.resource)

    def apply(self, settings: OtelSettings) -> None:
        """Point OTLP export where `settings` say. Blocking: run it off the event loop.

        Exporters are built before anything is switched, so a failure to build one (a bad
        certificate, say) leaves the running export untouched.
        """
        # Calls recorded before the switch, here or in a serving process, are exported where
        # they were meant to go.
        self.ingest.settle(time.monotonic(), _SWITCH_FLUSH_SECONDS)
        self.local.flush(_SWITCH_FLUSH_SECONDS)
        traces, metrics = settings.traces, settings.metrics
        REDACTOR.set_secrets(
            f"otlp-export-{id(self)}", [v for _, v in (*traces.headers, *metrics.headers)]
        )
        traces_changed = traces != self.settings.traces
        metrics_changed = metrics != self.settings.metrics
        span_exporter = build_span_exporter(traces) if traces_changed and traces.enabled else None
        metric_exporter = (
            build_metric_exporter(metrics) if metrics_changed and metrics.enabled else None
        )
        if traces_changed:
            self.span_export.swap(span_exporter)
        if metrics_changed:
            self.metric_export.apply(metrics, metric_exporter)
        self.settings = settings

    def shutdown(self, deadline: float) -> None:
        """Flush spans (store, then export) and metrics within one deadline; safe twice."""
        if self._closed:
            return
        self._closed = True

        def left_ms() -> int:
            return _ms_left(deadline)

        self.local.shutdown(deadline)
        if not self.tracer_provider.force_flush(left_ms()):
            _log.warning("span pipeline did not flush before the shutdown deadline")
        self.span_export.shutdown(max(left_ms(), 1))
        self.tracer_provider.shutdown()
        self.metric_export.shutdown(max(left_ms(), 1) / 1000)
        self.meter_provider.shutdown(timeout_millis=max(left_ms(), 1))
        self.store.close()


def _ms_left(deadline: float) -> int:
    return max(int((deadline - time.monotonic()) * 1000), 0)
