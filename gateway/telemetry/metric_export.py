"""OTLP metric export that can be re-pointed, re-timed or switched off at runtime.

A `PeriodicExportingMetricReader` wraps a `SwitchableMetricExporter`. Re-pointing (endpoint,
protocol, encoding, headers) swaps only the inner exporter, so cumulative totals carry on
across the switch. The reader reads its temporality and interval once, in its constructor, so
changing either (delta for Datadog, cumulative for Prometheus-style backends) builds a new
reader; the old one is flushed to its backend first, then removed and shut down — removing an
unflushed reader would lose its last interval. Switching off flushes, removes and shuts down.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)

from gateway.telemetry.export_outcome import ExportOutcome, reported_outcome
from gateway.telemetry.export_settings import ExporterSettings
from gateway.telemetry.export_stats import ExportStats

__all__ = ["MetricExport", "SwitchableMetricExporter", "temporality_preference"]

_log = logging.getLogger(__name__)


def _not_retire_noise(record: logging.LogRecord) -> bool:
    # remove_metric_reader() unregisters a reader and then shuts it down, and the reader's
    # final collect on shutdown then warns that it is not registered. We flush before removing,
    # so nothing is lost; the warning would only alarm operators on every config change.
    return not str(record.msg).startswith("Cannot call collect on a MetricReader until")


logging.getLogger("opentelemetry.sdk.metrics._internal.export").addFilter(_not_retire_noise)


def temporality_preference(kind: str) -> dict[type, AggregationTemporality]:
    """The OTLP "delta" preference: up-down counters and gauges stay cumulative (the spec)."""
    delta = AggregationTemporality.DELTA if kind == "delta" else AggregationTemporality.CUMULATIVE
    cumulative = AggregationTemporality.CUMULATIVE
    return {
        Counter: delta,
        UpDownCounter: cumulative,
        Histogram: delta,
        ObservableCounter: delta,
        ObservableUpDownCounter: cumulative,
        ObservableGauge: cumulative,
    }


def _points(data: MetricsData) -> int:
    return sum(
        len(m.data.data_points)
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    )


class SwitchableMetricExporter(MetricExporter):
    def __init__(self, stats: ExportStats, temporality: str) -> None:
        super().__init__(preferred_temporality=temporality_preference(temporality))
        self._stats = stats
        self._inner: MetricExporter | None = None
        self._lock = threading.Lock()

    def swap(self, exporter: MetricExporter | None) -> MetricExporter | None:
        with self._lock:
            old, self._inner = self._inner, exporter
        return old

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        with self._lock:
            inner = self._inner
            # The export runs under the lock so a swap never shuts down an exporter mid-call.
            if inner is None:
                return MetricExportResult.SUCCESS
            try:
                result = inner.export(metrics_data, timeout_millis=timeout_millis)
            except Exception as e:
                _log.exception("metric exporter raised")
                result = MetricExportResult.FAILURE
                outcome = ExportOutcome(success=False, reason="unknown", message=type(e).__name__)
            else:
                outcome = reported_outcome(inner, result is MetricExportResult.SUCCESS)
        self._stats.record(outcome, _points(metrics_data))
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        old = self.swap(None)
        if old is not None:
            old.shutdown()


class MetricExport:
    """The OTLP metric reader of one MeterProvider, rebuilt only when it has to be."""

    def __init__(self, meter_provider: MeterProvider, stats: ExportStats) -> None:
        self._provider = meter_provider
        self._stats = stats
        if not stats.signal:
            stats.signal = "metrics"
        self._reader: PeriodicExportingMetricReader | None = None
        self._switch: SwitchableMetricExporter | None = None
        self._shape: tuple[float, str] | None = None
        self._lock = threading.Lock()

    def apply(self, settings: ExporterSettings, exporter: MetricExporter | None) -> None:
        """Export with `exporter` under `settings` (None or disabled: stop). Blocks while the
        old reader flushes (bounded by its exporter's timeout)."""
        with self._lock:
            shape = (settings.export_interval, settings.temporality)
            if exporter is None or not settings.enabled:
                self._retire(settings.timeout)
                return
            self._stats.exporter_changed()
            if self._reader is not None and self._switch is not None and shape == self._shape:
                old = self._switch.swap(exporter)
                if old is not None:
                    old.shutdown()
                return
            self._retire(settings.timeout)
            switch = SwitchableMetricExporter(self._stats, settings.temporality)
            switch.swap(exporter)
            reader = PeriodicExportingMetricReader(
                switch,
                export_interval_millis=settings.export_interval * 1000,
                export_timeout_millis=settings.timeout * 1000,
            )
            self._provider.add_metric_reader(reader)
            self._reader, self._switch, self._shape = reader, switch, shape

    def force_flush(self, timeout_millis: float) -> bool:
        reader = self._reader
        return True if reader is None else reader.force_flush(timeout_millis)

    def _retire(self, timeout: float) -> None:
        reader, self._reader, self._switch, self._shape = self._reader, None, None, None
        if reader is None:
            return
        try:
            reader.force_flush(timeout_millis=timeout * 1000)
        except Exception:
            _log.exception("flushing the old metric reader failed")
        self._provider.remove_metric_reader(reader)

    def shutdown(self, timeout: float) -> None:
        with self._lock:
            self._retire(timeout)
