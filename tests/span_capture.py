"""Spans a gateway in this process ends, captured as the SDK builds them off the request path."""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.server import Gateway
from gateway.telemetry.pipeline import Telemetry


class CapturedSpans(InMemorySpanExporter):
    """Every read first waits for the records of calls made so far to become spans."""

    def __init__(self, telemetry: Telemetry) -> None:
        super().__init__()
        self._telemetry = telemetry

    def get_finished_spans(self) -> tuple[ReadableSpan, ...]:
        assert self._telemetry.local.flush(5.0), "call records did not reach the spans in 5 s"
        return super().get_finished_spans()  # type: ignore[no-any-return]


def capture(gw: Gateway) -> CapturedSpans:
    assert gw.telemetry is not None
    spans = CapturedSpans(gw.telemetry)
    gw.telemetry.tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    return spans
