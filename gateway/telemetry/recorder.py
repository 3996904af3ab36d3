"""`CallRecorder`: everything the request path records into, bound to one sink.

A serving process builds one: the interceptor's server spans, the GenAI client spans and every
measurement go through it as compact records (`call_records.py`) into `sink` — a `BatchWorker`
that delivers them to the telemetry side, in this process or in the telemetry process.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.config import TelemetryConfig
from gateway.telemetry.genai import GenAITelemetry
from gateway.telemetry.metrics import GatewayMetrics
from gateway.telemetry.span_record import SpanRecorder

__all__ = ["CallRecorder"]


class CallRecorder:
    def __init__(
        self,
        config: TelemetryConfig,
        sink: Callable[[tuple[object, ...]], None],
        active_changed: Callable[[], None] = lambda: None,
    ) -> None:
        self.spans = SpanRecorder(sink)
        self.metrics = GatewayMetrics(sink, active_changed)
        self.genai = GenAITelemetry(self.spans, self.metrics, config)
