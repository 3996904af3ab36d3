"""One real export to an endpoint, to test it before it is used (`TestOtelConfig`).

A dry run, so unlike the live exporters it:

* makes exactly one attempt — no retry, no backoff — bounded by the section's timeout, so a
  dead endpoint answers in about that time, not after the exporters' retry schedule;
* logs nothing above DEBUG: the outcome is the answer, and the official exporters' own
  failure lines are demoted (`otlp_exporters`); it never touches the live `ExportStats`;
* returns only what `export_outcome` keeps of the answer: the backend's *error* words capped
  at 1 KiB, never a success body — so an admin token does not make it a reader of whatever
  internal HTTP service answers 2xx.
"""

from __future__ import annotations

import time

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.telemetry.export_outcome import (
    ExportOutcome,
    endpoint_address,
    outcome_from_exception,
    reported_outcome,
)
from gateway.telemetry.export_settings import ExporterSettings
from gateway.telemetry.otlp_exporters import build_metric_exporter, build_span_exporter

__all__ = ["probe_export"]

PROBE_NAME = "aigw.otel.test"


def probe_export(
    section: str, settings: ExporterSettings, resource: Resource
) -> tuple[ExportOutcome, float]:
    """Export one span ("traces") or one counter point ("metrics") as `settings` say.

    Returns the outcome and the seconds it took. Never raises for a transport problem.
    """
    started = time.perf_counter()
    try:
        outcome = _export_once(section, settings, resource)
    except Exception as e:  # building the exporter failed (a bad URL, say)
        outcome = outcome_from_exception(
            e,
            address=endpoint_address(settings.endpoint),
            secrets=settings.secrets,
        )
    return outcome, time.perf_counter() - started


def _export_once(section: str, settings: ExporterSettings, resource: Resource) -> ExportOutcome:
    if section == "traces":
        spans = InMemorySpanExporter()
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(SimpleSpanProcessor(spans))
        provider.get_tracer(PROBE_NAME).start_span(PROBE_NAME).end()
        provider.shutdown()
        span_exporter = build_span_exporter(settings, single_attempt=True)
        try:
            ok = span_exporter.export(spans.get_finished_spans()) is SpanExportResult.SUCCESS
            return reported_outcome(span_exporter, ok)
        finally:
            span_exporter.shutdown()
    reader = InMemoryMetricReader()
    meters = MeterProvider(resource=resource, metric_readers=[reader])
    meters.get_meter(PROBE_NAME).create_counter(PROBE_NAME).add(1)
    data = reader.get_metrics_data()
    meters.shutdown()
    metric_exporter = build_metric_exporter(settings, single_attempt=True)
    try:
        result = metric_exporter.export(data, timeout_millis=settings.timeout * 1000)
        return reported_outcome(metric_exporter, result is MetricExportResult.SUCCESS)
    finally:
        metric_exporter.shutdown()
