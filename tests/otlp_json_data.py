"""The spans and metrics the OTLP/JSON tests encode and export (ids with leading zero bytes,
every attribute type, links, events, exemplars), and readers for the JSON they produce."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
    MetricsData,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

TraceRequest = trace_service_pb2.ExportTraceServiceRequest
MetricsRequest = metrics_service_pb2.ExportMetricsServiceRequest

# Ids with leading zero bytes: hex must keep fixed width (a "%x" encoder would drop them).
REMOTE_TRACE_ID = 0x000000000000000000000000000000AB
REMOTE_SPAN_ID = 0x00000000000000CD
LINK_TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
LINK_SPAN_ID = 0x00F067AA0BA902B7

# OTLP's SpanKind numbering (SPAN_KIND_UNSPECIFIED = 0), not the SDK enum's values.
OTLP_KIND = {"INTERNAL": 1, "SERVER": 2, "CLIENT": 3, "PRODUCER": 4, "CONSUMER": 5}

ALL_ATTRIBUTE_TYPES: dict[str, Any] = {
    "str": "chat",
    "bool": True,
    "int": 2**62,  # beyond 2**53: only survives as a decimal string
    "neg": -7,
    "float": 0.25,
    "strs": ["a", "b"],
    "bools": [True, False],
    "ints": [1, 2**40],
    "floats": [0.5, 1.5],
}
LOWER_CAMEL = re.compile(r"[a-z][a-zA-Z0-9]*")


# --- data ----------------------------------------------------------------------------------


def make_spans() -> list[ReadableSpan]:
    """A small trace exercising every span feature OTLP/JSON treats specially."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "aigw-test"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("aigw.test", "1.2.3")

    remote_parent = SpanContext(
        trace_id=REMOTE_TRACE_ID,
        span_id=REMOTE_SPAN_ID,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "v1")]),
    )
    linked = SpanContext(
        trace_id=LINK_TRACE_ID,
        span_id=LINK_SPAN_ID,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("other", "x")]),
    )
    with tracer.start_as_current_span(
        "server",
        context=trace.set_span_in_context(NonRecordingSpan(remote_parent)),
        kind=SpanKind.SERVER,
        attributes=ALL_ATTRIBUTE_TYPES,
        links=[Link(linked, {"link.weight": 7})],
    ) as server:
        server.add_event("request.received", {"bytes": 12, "ok": True})
        with tracer.start_as_current_span("client", kind=SpanKind.CLIENT) as client:
            client.set_status(Status(StatusCode.OK))
        for kind in (SpanKind.INTERNAL, SpanKind.PRODUCER, SpanKind.CONSUMER):
            tracer.start_span(f"kind-{kind.name}", kind=kind).end()
        server.set_status(Status(StatusCode.ERROR, "upstream failed"))
    spans = list(memory.get_finished_spans())
    provider.shutdown()
    return spans


def make_metrics(temporality: AggregationTemporality) -> tuple[MetricsData, SpanContext]:
    """Sum (monotonic and not), gauges and a histogram with an exemplar, in one temporality."""
    reader = InMemoryMetricReader(
        preferred_temporality={
            Counter: temporality,
            UpDownCounter: temporality,
            Histogram: temporality,
            ObservableCounter: temporality,
        }
    )
    provider = MeterProvider(
        metric_readers=[reader], resource=Resource.create({"service.name": "aigw-test"})
    )
    meter = provider.get_meter("aigw.test", "1.2.3")
    requests = meter.create_counter("requests", unit="{request}")
    inflight = meter.create_up_down_counter("inflight")
    latency = meter.create_histogram("latency", unit="s")
    temperature = meter.create_gauge("temperature")

    def observe(_: CallbackOptions) -> list[Observation]:
        return [Observation(3, {"queue": "a"})]

    meter.create_observable_gauge("queue_depth", callbacks=[observe])

    tracer_provider = TracerProvider()
    # The default exemplar filter keeps measurements made inside a sampled span.
    with tracer_provider.get_tracer("t").start_as_current_span("op") as span:
        requests.add(5, {"route": "chat"})
        latency.record(0.25, {"route": "chat"})
    requests.add(2, {"route": "embed"})
    inflight.add(3)
    inflight.add(-1)
    temperature.set(21.5)
    data = reader.get_metrics_data()
    assert data is not None
    provider.shutdown()
    tracer_provider.shutdown()
    return data, span.get_span_context()


def walk_keys(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from walk_keys(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_keys(item)


def raw_spans(body: bytes) -> dict[str, dict[str, Any]]:
    doc = json.loads(body)
    return {
        span["name"]: span
        for rs in doc["resourceSpans"]
        for ss in rs["scopeSpans"]
        for span in ss["spans"]
    }


def raw_metrics(body: bytes) -> dict[str, dict[str, Any]]:
    doc = json.loads(body)
    return {
        metric["name"]: metric
        for rm in doc["resourceMetrics"]
        for sm in rm["scopeMetrics"]
        for metric in sm["metrics"]
    }


def expected_keys(spans: list[ReadableSpan]) -> list[tuple[str, str, str]]:
    return sorted(
        (f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}", s.name) for s in spans
    )
