"""OTLP export through real receivers: every protocol × encoding, switching under load,
temporality, failing backends, and the trace store beside it all."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
from aigw.v1 import admin_pb2, admin_pb2_grpc, completion_pb2_grpc, otel_config_pb2
from google.protobuf import duration_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.server import Gateway
from tests.conftest import chat
from tests.otlp_receivers import GrpcOtlpReceiver, HttpOtlpReceiver

HTTP = otel_config_pb2.PROTOCOL_HTTP
GRPC = otel_config_pb2.PROTOCOL_GRPC
PROTO = otel_config_pb2.ENCODING_PROTO
JSON = otel_config_pb2.ENCODING_JSON


@pytest.fixture
def http_receiver() -> AsyncIterator[HttpOtlpReceiver]:
    with HttpOtlpReceiver() as r:
        yield r


@pytest.fixture
def grpc_receiver() -> AsyncIterator[GrpcOtlpReceiver]:
    with GrpcOtlpReceiver() as r:
        yield r


def exporter(
    protocol: int, encoding: int, endpoint: str, **kwargs: object
) -> otel_config_pb2.ExporterConfig:
    return otel_config_pb2.ExporterConfig(
        enabled=True, protocol=protocol, encoding=encoding, endpoint=endpoint, **kwargs
    )


def endpoint_for(receiver: HttpOtlpReceiver | GrpcOtlpReceiver, signal: str) -> str:
    if isinstance(receiver, GrpcOtlpReceiver):
        return receiver.endpoint
    return receiver.traces_url if signal == "traces" else receiver.metrics_url


@contextlib.asynccontextmanager
async def clients(
    gw: Gateway,
) -> AsyncIterator[tuple[completion_pb2_grpc.CompletionStub, admin_pb2_grpc.AdminServiceStub]]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as ch:
        yield completion_pb2_grpc.CompletionStub(ch), admin_pb2_grpc.AdminServiceStub(ch)


async def flush(gw: Gateway) -> None:
    assert gw.telemetry is not None
    assert await asyncio.to_thread(gw.telemetry.span_export.force_flush, 10_000)


async def flush_metrics(gw: Gateway) -> None:
    assert gw.telemetry is not None
    assert await asyncio.to_thread(gw.telemetry.metric_export.force_flush, 10_000)


CASES = [
    pytest.param("http", HTTP, PROTO, id="http-proto"),
    pytest.param("http", HTTP, JSON, id="http-json"),
    pytest.param("grpc", GRPC, PROTO, id="grpc-proto"),
]


@pytest.mark.parametrize(("kind", "protocol", "encoding"), CASES)
async def test_traces_and_metrics_arrive_with_headers(
    http_receiver: HttpOtlpReceiver,
    grpc_receiver: GrpcOtlpReceiver,
    gateway: Gateway,
    kind: str,
    protocol: int,
    encoding: int,
) -> None:
    receiver = grpc_receiver if kind == "grpc" else http_receiver
    headers = {"x-tenant": "acme", "authorization": "Bearer sekret-token-1"}
    async with clients(gateway) as (completion, admin):
        await admin.SetOtelConfig(
            admin_pb2.SetOtelConfigRequest(
                config=otel_config_pb2.OtelConfig(
                    traces=exporter(
                        protocol, encoding, endpoint_for(receiver, "traces"), headers=headers
                    ),
                    metrics=exporter(
                        protocol, encoding, endpoint_for(receiver, "metrics"), headers=headers
                    ),
                )
            ),
            timeout=10,
        )
        for text in ("one", "one two"):
            await completion.Complete(chat(text), timeout=5)
        await flush(gateway)
        await flush_metrics(gateway)
        health = (await admin.GetOtelConfig(admin_pb2.GetOtelConfigRequest(), timeout=5)).health

    names = collections.Counter(name for _, _, name in receiver.spans())
    assert names["aigw.v1.Completion/Complete"] == 2
    assert names["chat echo-1"] == 2
    assert "aigw.v1.AdminService/SetOtelConfig" in names
    trace_requests = receiver.trace_requests()
    assert trace_requests
    assert receiver.metric_requests()
    for record in receiver.requests:
        got = record.metadata_dict if kind == "grpc" else record.headers
        assert got["x-tenant"] == "acme"
        assert got["authorization"] == "Bearer sekret-token-1"
    if kind == "http":
        want = "application/json" if encoding == JSON else "application/x-protobuf"
        assert {r.content_type.split(";")[0] for r in http_receiver.requests} == {want}
        assert not http_receiver.violations
    points = receiver.metric_points()
    assert "rpc.server.call.duration" in points
    assert "gen_ai.client.token.usage" in points
    # The resource names the service on every request.
    resource = trace_requests[0].resource_spans[0].resource
    attrs = {a.key: a.value.string_value for a in resource.attributes}
    assert attrs["service.name"] == "aigw"
    assert attrs["service.instance.id"]
    assert health.traces.exported >= 4
    assert health.traces.HasField("last_success_time")
    assert health.metrics.exported > 0


def _temporalities(receiver: HttpOtlpReceiver, name: str) -> set[int]:
    out = set()
    for request in receiver.metric_requests():
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name != name:
                        continue
                    data = getattr(m, m.WhichOneof("data"))
                    out.add(data.aggregation_temporality)
    return out


@pytest.mark.parametrize(
    ("temporality", "expected"),
    [
        (otel_config_pb2.TEMPORALITY_CUMULATIVE, metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE),
        (otel_config_pb2.TEMPORALITY_DELTA, metrics_pb2.AGGREGATION_TEMPORALITY_DELTA),
    ],
)
async def test_metric_temporality_follows_the_config(
    http_receiver: HttpOtlpReceiver, gateway: Gateway, temporality: int, expected: int
) -> None:
    async with clients(gateway) as (completion, admin):
        await admin.SetOtelConfig(
            admin_pb2.SetOtelConfigRequest(
                config=otel_config_pb2.OtelConfig(
                    metrics=exporter(
                        HTTP, PROTO, http_receiver.metrics_url, temporality=temporality
                    )
                )
            ),
            timeout=10,
        )
        await completion.Complete(chat("a b"), timeout=5)
        await flush_metrics(gateway)
        await completion.Complete(chat("a b c"), timeout=5)
        await flush_metrics(gateway)
    assert _temporalities(http_receiver, "gen_ai.client.token.usage") == {expected}
    # Up-down counters stay cumulative even under a delta preference (OTLP spec).
    assert _temporalities(http_receiver, "aigw.server.active_requests") == {
        metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
    }
    counts = [
        sum(p.count for p in m.histogram.data_points)
        for r in http_receiver.metric_requests()
        for rm in r.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "rpc.server.call.duration"
    ]
    # Cumulative counts grow (1 call, then 2 … plus admin calls); delta counts restart.
    if expected == metrics_pb2.AGGREGATION_TEMPORALITY_DELTA:
        assert counts[-1] <= counts[0] + 1
    else:
        assert counts[-1] > counts[0]


async def test_switching_under_load_delivers_every_span_exactly_once(gateway: Gateway) -> None:
    """50 switches between three receivers (HTTP proto, HTTP JSON, gRPC) while clients call."""
    captured = InMemorySpanExporter()
    assert gateway.telemetry is not None
    with HttpOtlpReceiver() as a, HttpOtlpReceiver() as b, GrpcOtlpReceiver() as c:
        targets = [
            exporter(HTTP, PROTO, a.traces_url),
            exporter(HTTP, JSON, b.traces_url),
            exporter(GRPC, PROTO, c.endpoint),
        ]
        async with clients(gateway) as (completion, admin):
            await admin.SetOtelConfig(
                admin_pb2.SetOtelConfigRequest(
                    config=otel_config_pb2.OtelConfig(traces=targets[0])
                ),
                timeout=10,
            )
            # Capture from here on: every span ended from now must arrive somewhere.
            gateway.telemetry.tracer_provider.add_span_processor(SimpleSpanProcessor(captured))
            stop = asyncio.Event()
            calls = 0

            async def load() -> None:
                nonlocal calls
                while not stop.is_set():
                    await completion.Complete(chat("switch me"), timeout=10)
                    calls += 1

            workers = [asyncio.create_task(load()) for _ in range(4)]
            try:
                for i in range(50):
                    await admin.SetOtelConfig(
                        admin_pb2.SetOtelConfigRequest(
                            config=otel_config_pb2.OtelConfig(traces=targets[(i + 1) % 3])
                        ),
                        timeout=10,
                    )
                    await asyncio.sleep(0.02)
            finally:
                stop.set()
                await asyncio.gather(*workers)
            await flush(gateway)

        received = collections.Counter(
            (trace_id, span_id) for r in (a, b, c) for trace_id, span_id, _ in r.spans()
        )
        assert not a.violations
        assert not b.violations
    expected = {
        (format(s.context.trace_id, "032x"), format(s.context.span_id, "016x"))
        for s in captured.get_finished_spans()
    }
    assert calls > 50
    duplicates = {k: n for k, n in received.items() if n > 1}
    assert not duplicates
    missing = expected - received.keys()
    assert not missing, f"{len(missing)} of {len(expected)} spans never arrived"
    snapshot = gateway.telemetry.trace_stats.snapshot()
    assert snapshot.failed == 0
    assert snapshot.dropped == 0


async def test_failing_backend_costs_counted_drops_never_requests(gateway: Gateway) -> None:
    with HttpOtlpReceiver() as receiver:
        receiver.respond_with(401, b"invalid API key")
        async with clients(gateway) as (completion, admin):
            await admin.SetOtelConfig(
                admin_pb2.SetOtelConfigRequest(
                    config=otel_config_pb2.OtelConfig(
                        traces=exporter(
                            HTTP,
                            PROTO,
                            receiver.traces_url,
                            timeout=duration_pb2.Duration(seconds=1),
                        )
                    )
                ),
                timeout=10,
            )
            for _ in range(5):
                assert (await completion.Complete(chat("still works"), timeout=5)).content
            await flush(gateway)
            got = await admin.GetOtelConfig(admin_pb2.GetOtelConfigRequest(), timeout=5)
            assert got.health.traces.failed >= 10
            assert got.health.traces.last_error.startswith("http_4xx")
            assert "invalid API key" in got.health.traces.last_error
            # Recovery: the backend comes back and export resumes by itself.
            receiver.respond_ok()
            await completion.Complete(chat("recovered"), timeout=5)
            await flush(gateway)
            healed = await admin.GetOtelConfig(admin_pb2.GetOtelConfigRequest(), timeout=5)
            assert healed.health.traces.exported > 0
            assert healed.health.traces.last_success_time.ToNanoseconds() > (
                healed.health.traces.last_error_time.ToNanoseconds()
            )
            # The trace store kept every trace whatever the exporter did.
            listed = await admin.ListTraces(admin_pb2.ListTracesRequest(page_size=100), timeout=5)
            await asyncio.to_thread(gateway.telemetry.store_processor.force_flush, 5000)
            listed = await admin.ListTraces(admin_pb2.ListTracesRequest(page_size=100), timeout=5)
            completes = [t for t in listed.traces if t.root_span_name.endswith("/Complete")]
            assert len(completes) == 6


async def test_disabling_export_delivers_what_was_queued_then_stops(gateway: Gateway) -> None:
    with HttpOtlpReceiver() as receiver:
        async with clients(gateway) as (completion, admin):
            on = exporter(HTTP, PROTO, receiver.traces_url)
            await admin.SetOtelConfig(
                admin_pb2.SetOtelConfigRequest(config=otel_config_pb2.OtelConfig(traces=on)),
                timeout=10,
            )
            await completion.Complete(chat("before"), timeout=5)
            off = otel_config_pb2.ExporterConfig(enabled=False, endpoint=receiver.traces_url)
            await admin.SetOtelConfig(
                admin_pb2.SetOtelConfigRequest(config=otel_config_pb2.OtelConfig(traces=off)),
                timeout=10,
            )
            await completion.Complete(chat("after"), timeout=5)
            await flush(gateway)
        names = collections.Counter(name for _, _, name in receiver.spans())
        assert names["aigw.v1.Completion/Complete"] == 1
    # "after" ended while export was off: not a loss, so not counted as dropped.
    assert gateway.telemetry.trace_stats.snapshot().dropped == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("fault", ["refused", "black_hole", "503", "flapping"])
async def test_backend_faults_never_fail_requests_and_are_counted(
    gateway: Gateway, fault: str
) -> None:
    from tests.otlp_receivers import refusing_endpoint

    with HttpOtlpReceiver() as receiver, refusing_endpoint() as refused:
        endpoint = refused if fault == "refused" else receiver.traces_url
        budget = duration_pb2.Duration(seconds=5 if fault == "flapping" else 0)
        if fault != "flapping":
            budget.nanos = 500_000_000
        if fault == "black_hole":
            receiver.black_hole()
        elif fault == "503":
            receiver.respond_with(503, b"overloaded")
        elif fault == "flapping":
            for _ in range(10):
                receiver.respond_with(503, b"flap", times=1)
                receiver.respond_ok(times=1)
        async with clients(gateway) as (completion, admin):
            await admin.SetOtelConfig(
                admin_pb2.SetOtelConfigRequest(
                    config=otel_config_pb2.OtelConfig(
                        # Flapping needs a budget that outlasts one retry backoff (~1 s).
                        traces=exporter(HTTP, PROTO, endpoint, timeout=budget)
                    )
                ),
                timeout=10,
            )
            for i in range(30):
                reply = await completion.Complete(chat(f"call {i}"), timeout=5)
                assert reply.content == f"call {i}"
            await flush(gateway)
            health = (await admin.GetOtelConfig(admin_pb2.GetOtelConfigRequest(), timeout=5)).health
            if fault != "flapping":
                # Nothing arrived; every exported span is accounted for as failed.
                assert health.traces.failed >= 60
                assert health.traces.exported == 0
                assert (
                    health.traces.last_error.split(":")[0]
                    == {
                        "refused": "connection_refused",
                        "black_hole": "timeout",
                        "503": "http_5xx",
                    }[fault]
                )
                # Recovery, by itself, once the backend answers again.
                receiver.respond_ok()
                if fault == "refused":
                    await admin.SetOtelConfig(
                        admin_pb2.SetOtelConfigRequest(
                            config=otel_config_pb2.OtelConfig(
                                traces=exporter(HTTP, PROTO, receiver.traces_url)
                            )
                        ),
                        timeout=10,
                    )
                await completion.Complete(chat("back"), timeout=5)
                await flush(gateway)
                health = (
                    await admin.GetOtelConfig(admin_pb2.GetOtelConfigRequest(), timeout=5)
                ).health
            assert health.traces.exported > 0
            assert health.traces.last_success_time.ToNanoseconds() > 0
