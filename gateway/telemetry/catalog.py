"""Every metric the gateway emits: name, kind, unit, buckets and attributes, in one place.

`/metrics` (Prometheus) and OTLP export read the same instruments, so this file is the whole
contract; the Grafana dashboard and its test are built on these names. Prometheus names follow
the OpenTelemetry translation: dots become underscores, the unit becomes a suffix (`s` →
`_seconds`), counters end in `_total`.

Semantic conventions:
- RPC: https://opentelemetry.io/docs/specs/semconv/rpc/rpc-metrics/
- GenAI: https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-metrics/
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

__all__ = ["CATALOG", "Attr", "Instrument", "Kind", "histogram_views"]


class Attr:
    """Attribute keys shared by spans and metrics."""

    RPC_SYSTEM = "rpc.system.name"
    RPC_METHOD = "rpc.method"
    # The current RPC conventions name it rpc.response.status_code (a string such as "OK").
    RPC_STATUS = "rpc.response.status_code"
    ERROR_TYPE = "error.type"
    SERVER_ADDRESS = "server.address"
    SERVER_PORT = "server.port"
    PEER_ADDRESS = "network.peer.address"
    PEER_PORT = "network.peer.port"
    OPERATION = "gen_ai.operation.name"
    PROVIDER = "gen_ai.provider.name"
    REQUEST_MODEL = "gen_ai.request.model"
    RESPONSE_MODEL = "gen_ai.response.model"
    TOKEN_TYPE = "gen_ai.token.type"  # noqa: S105 - an attribute key, not a secret
    # The route name the client asked for; it can differ from the upstream model.
    ROUTE = "aigw.route"
    OUTCOME = "outcome"
    REASON = "reason"
    EVENT = "event"
    PROCESS = "process"
    METADATA_PREFIX = "metadata."


class Kind(Enum):
    HISTOGRAM = "histogram"
    COUNTER = "counter"
    OBSERVABLE_UP_DOWN_COUNTER = "observable_up_down_counter"
    OBSERVABLE_COUNTER = "observable_counter"


@dataclass(frozen=True, slots=True)
class Instrument:
    name: str
    kind: Kind
    unit: str
    description: str
    attributes: tuple[str, ...]
    buckets: tuple[float, ...] = ()


_GENAI = (Attr.OPERATION, Attr.PROVIDER, Attr.REQUEST_MODEL, Attr.RESPONSE_MODEL, Attr.ROUTE)


class CATALOG:
    # semconv rpc.server.call.duration buckets
    RPC_DURATION = Instrument(
        "rpc.server.call.duration",
        Kind.HISTOGRAM,
        "s",
        "Duration of RPCs served by the gateway, from headers in to status out.",
        (Attr.RPC_SYSTEM, Attr.RPC_METHOD, Attr.RPC_STATUS),
        (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10),
    )
    # semconv gen_ai.server.request.duration buckets (×2 from 10 ms)
    GENAI_DURATION = Instrument(
        "gen_ai.server.request.duration",
        Kind.HISTOGRAM,
        "s",
        "Duration of GenAI requests through the gateway, upstream call included.",
        (*_GENAI, Attr.ERROR_TYPE),
        (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92),
    )
    # semconv gen_ai.client.token.usage buckets (×4 from 1)
    TOKEN_USAGE = Instrument(
        "gen_ai.client.token.usage",
        Kind.HISTOGRAM,
        "{token}",
        "Tokens per request, by gen_ai.token.type (input or output).",
        (*_GENAI, Attr.TOKEN_TYPE),
        tuple(float(4**i) for i in range(14)),
    )
    # semconv gen_ai.server.time_to_first_token buckets
    TIME_TO_FIRST_TOKEN = Instrument(
        "gen_ai.server.time_to_first_token",
        Kind.HISTOGRAM,
        "s",
        "Time from request to the first streamed content chunk.",
        _GENAI,
        (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10),
    )
    # semconv gen_ai.server.time_per_output_token buckets
    TIME_PER_OUTPUT_TOKEN = Instrument(
        "gen_ai.server.time_per_output_token",
        Kind.HISTOGRAM,
        "s",
        "Time per output token after the first, for streamed completions.",
        _GENAI,
        (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5),
    )
    ACTIVE_REQUESTS = Instrument(
        "aigw.server.active_requests",
        Kind.OBSERVABLE_UP_DOWN_COUNTER,
        "{request}",
        "RPCs being served right now.",
        (Attr.RPC_METHOD,),
    )
    COST = Instrument(
        "aigw.usage.cost",
        Kind.COUNTER,
        "USD",
        "Upstream cost of completions on routes with a price, from reported token usage.",
        (Attr.PROVIDER, Attr.REQUEST_MODEL, Attr.ROUTE),
    )
    SPANS_EXPORTED = Instrument(
        "aigw.telemetry.spans.exported",
        Kind.OBSERVABLE_COUNTER,
        "{span}",
        "Spans handed to the OTLP trace exporter, by outcome (success, failed) and reason.",
        (Attr.OUTCOME, Attr.REASON),
    )
    SPANS_DROPPED = Instrument(
        "aigw.telemetry.spans.dropped",
        Kind.OBSERVABLE_COUNTER,
        "{span}",
        "Spans not exported: queue_full, export_disabled, shutdown.",
        (Attr.REASON,),
    )
    RECORDS_DROPPED = Instrument(
        "aigw.telemetry.records.dropped",
        Kind.OBSERVABLE_COUNTER,
        "{record}",
        "Call records (spans and measurements) lost on their way from a serving process to "
        "the telemetry side: queue_full, telemetry_unavailable, failed, shutdown.",
        (Attr.REASON,),
    )
    PROCESS_RESTARTS = Instrument(
        "aigw.process.restarts",
        Kind.OBSERVABLE_COUNTER,
        "{restart}",
        "Processes of this gateway restarted after they died: telemetry, worker.",
        (Attr.PROCESS,),
    )
    METRIC_EXPORTS = Instrument(
        "aigw.telemetry.metrics.exports",
        Kind.OBSERVABLE_COUNTER,
        "{export}",
        "OTLP metric export attempts, by outcome and reason.",
        (Attr.OUTCOME, Attr.REASON),
    )
    TRACE_STORE_SPANS = Instrument(
        "aigw.trace_store.spans",
        Kind.OBSERVABLE_COUNTER,
        "{span}",
        "Spans through the embedded trace store, by event: written, evicted, dropped, failed.",
        (Attr.EVENT,),
    )

    @classmethod
    def all(cls) -> tuple[Instrument, ...]:
        return tuple(v for v in vars(cls).values() if isinstance(v, Instrument))


def histogram_views() -> list[View]:
    """Bucket boundaries per histogram; the SDK's defaults suit neither seconds nor tokens."""
    return [
        View(
            instrument_name=i.name,
            aggregation=ExplicitBucketHistogramAggregation(boundaries=i.buckets),
        )
        for i in CATALOG.all()
        if i.kind is Kind.HISTOGRAM
    ]
