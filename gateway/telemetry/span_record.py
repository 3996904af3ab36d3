"""Spans as the request path records them: a few fields and a dict, nothing else.

The OpenTelemetry SDK's `Span` takes a lock and cleans the value on every `set_attribute`, runs
every processor's `on_start`/`on_end` on the request's thread, and costs 25–28 µs per span
before anything is stored or exported (BENCHMARKS.md, profile). A `SpanRecord` is what the
request path needs of a span and no more: ids, times, kind, status and an attribute dict.
`end()` hands one compact tuple (`SPAN` in `call_records.py`) to a sink; the SDK's
`ReadableSpan` is built from it later, in batches, away from the request (`ingest.py`), so
processors, the trace store and the OTLP exporters see the spans they always saw.

Sampling follows the SDK default the gateway always used (parent-based, always on): a caller's
`traceparent` whose sampled flag is off makes the call's spans non-recording; they still carry
ids, so the trace context reaches the provider unchanged.

The current RPC span lives in a context variable of ours, not in the OpenTelemetry context:
nothing else reads it, and an attach costs more. Providers that propagate the trace context
read the OpenTelemetry context; `UpstreamCall.active` puts the client span's context there.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar

from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
)

from gateway.telemetry.call_records import SPAN

__all__ = ["CURRENT_SPAN", "NO_SPAN", "AnySpan", "SpanRecord", "SpanRecorder", "current_span"]

AttributeValue = str | int | float | bool | tuple[str, ...]
Sink = Callable[[tuple[object, ...]], None]

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSAMPLED = TraceFlags(TraceFlags.DEFAULT)
# Trace ids need uniqueness, not secrecy (the SDK's generator uses `random` too).
_ids = random.Random()


class SpanRecord:
    """One span being recorded. Not thread-safe: one request's code owns it."""

    __slots__ = (
        "_ended",
        "_sink",
        "attributes",
        "kind",
        "name",
        "parent_id",
        "remote_parent",
        "sampled",
        "span_id",
        "start_ns",
        "status_code",
        "status_message",
        "trace_id",
        "trace_state",
    )

    def __init__(
        self,
        sink: Sink,
        name: str,
        kind: SpanKind,
        attributes: dict[str, AttributeValue],
        trace_id: int,
        parent_id: int,
        remote_parent: bool,
        trace_state: TraceState | None,
        sampled: bool,
    ) -> None:
        self._sink = sink
        self.name = name
        self.kind = kind
        self.attributes = attributes
        self.trace_id = trace_id
        self.span_id = _new_span_id()
        self.parent_id = parent_id
        self.remote_parent = remote_parent
        self.trace_state = trace_state
        self.sampled = sampled
        self.status_code = StatusCode.UNSET
        self.status_message = ""
        self.start_ns = time.time_ns()
        self._ended = False

    def is_recording(self) -> bool:
        return self.sampled and not self._ended

    # Ignored once ended, as the SDK does: the dict may already be on its way to the
    # telemetry side (in one process, shared with the span being built from it).
    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if not self._ended:
            self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        if not self._ended:
            self.attributes.update(attributes)

    def set_status(self, code: StatusCode, message: str = "") -> None:
        self.status_code = code
        # The conventions allow a description on ERROR only (as the SDK enforces).
        self.status_message = message if code is StatusCode.ERROR else ""

    def span_context(self) -> SpanContext:
        return SpanContext(
            self.trace_id,
            self.span_id,
            is_remote=False,
            trace_flags=_SAMPLED if self.sampled else _UNSAMPLED,
            trace_state=self.trace_state,
        )

    def otel_span(self) -> NonRecordingSpan:
        """This span as the OpenTelemetry API sees it, for propagators."""
        return NonRecordingSpan(self.span_context())

    def end(self) -> None:
        if self._ended:
            return
        self._ended = True
        if not self.sampled:
            return
        self._sink(
            (
                SPAN,
                self.name,
                self.kind.value,
                self.trace_id,
                self.span_id,
                self.parent_id,
                self.remote_parent,
                self.trace_state.to_header() if self.trace_state else "",
                self.start_ns,
                time.time_ns(),
                self.attributes,
                self.status_code.value,
                self.status_message,
            )
        )


class _NoSpan:
    """No span: what `current_span()` answers outside a traced call. Every method a no-op."""

    __slots__ = ()

    def is_recording(self) -> bool:
        return False

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        return None

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        return None


NO_SPAN = _NoSpan()
AnySpan = SpanRecord | _NoSpan
CURRENT_SPAN: ContextVar[AnySpan] = ContextVar("aigw_current_span", default=NO_SPAN)


def current_span() -> AnySpan:
    return CURRENT_SPAN.get()


def _new_span_id() -> int:
    while True:
        span_id = _ids.getrandbits(64)
        if span_id:
            return span_id


def _new_trace_id() -> int:
    while True:
        trace_id = _ids.getrandbits(128)
        if trace_id:
            return trace_id


class SpanRecorder:
    """Starts `SpanRecord`s that end into `sink`: the request path's tracer."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def start(
        self,
        name: str,
        kind: SpanKind,
        attributes: dict[str, AttributeValue],
        parent: AnySpan | SpanContext | None = None,
    ) -> SpanRecord:
        """A span, child of `parent`: a local span, a caller's span context, or none (a root)."""
        if isinstance(parent, SpanRecord):
            trace_id, parent_id, remote = parent.trace_id, parent.span_id, False
            state, sampled = parent.trace_state, parent.sampled
        elif isinstance(parent, SpanContext) and parent.is_valid:
            trace_id, parent_id, remote = parent.trace_id, parent.span_id, parent.is_remote
            state, sampled = parent.trace_state, parent.trace_flags.sampled
        else:
            trace_id, parent_id, remote, state, sampled = _new_trace_id(), 0, False, None, True
        return SpanRecord(
            self._sink, name, kind, attributes, trace_id, parent_id, remote, state, sampled
        )
