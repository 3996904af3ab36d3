"""OTLP export through real receivers: every protocol × encoding, switching under load,
temporality, failing backends, and the trace store beside it all."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
from collections.abc import AsyncIterator

import grpc
import pytest
from aigw.v1 import admin_pb2, admin_pb2_grpc, completion_pb2_grpc, otel_config_pb2
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2

from gateway.server import Gateway
from tests.conftest import chat
from tests.otlp_receivers import GrpcOtlpReceiver, HttpOtlpReceiver
from tests.span_capture import capture

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
    assert await asyncio.to_thread(gw.telemetry.force_flush, 10)


async def flush_metrics(gw: Gateway) -> None:
    assert gw.telemetry is not None
    assert await asyncio.to_thread(gw.telemetry.flush_metrics, 10)


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
    _assert_metric_content(receiver.metric_requests())
    # The resource names the service on every request.
    resource = trace_requests[0].resource_spans[0].resource
    attrs = {a.key: a.value.string_value for a in resource.attributes}
    assert attrs["service.name"] == "aigw"
    assert attrs["service.instance.id"]
    assert health.traces.exported >= 4
    assert health.traces.HasField("last_success_time")
    assert health.metrics.exported > 0


def _attrs(point: Message) -> dict[str, object]:
    out: dict[str, object] = {}
    for kv in point.attributes:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind else None
    return out


def _last_metrics(
    requests: list[metrics_service_pb2.ExportMetricsServiceRequest],
) -> dict[str, metrics_pb2.Metric]:
    """Each metric as the last request that carried it had it (cumulative: the totals)."""
    out: dict[str, metrics_pb2.Metric] = {}
    for request in requests:
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    out[metric.name] = metric
    return out


GENAI_ECHO = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "echo",
    "gen_ai.request.model": "echo-1",
    "gen_ai.response.model": "echo-1",
    "aigw.route": "echo",
}
RPC_KEYS = {"rpc.system.name", "rpc.method", "rpc.response.status_code"}


def _assert_metric_content(
    requests: list[metrics_service_pb2.ExportMetricsServiceRequest],
) -> None:
    """Two successful Complete calls on the echo route ("one", "one two"), as OTLP carries them:
    names, kinds, units, temporality, attribute sets and values."""
    metrics = _last_metrics(requests)
    cumulative = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE

    rpc = metrics["rpc.server.call.duration"]
    assert (rpc.unit, rpc.WhichOneof("data")) == ("s", "histogram")
    assert rpc.histogram.aggregation_temporality == cumulative
    for point in rpc.histogram.data_points:
        assert set(_attrs(point)) == RPC_KEYS
        assert _attrs(point)["rpc.system.name"] == "grpc"
        assert len(point.bucket_counts) == len(point.explicit_bounds) + 1
        assert sum(point.bucket_counts) == point.count
    [complete] = [
        p
        for p in rpc.histogram.data_points
        if _attrs(p)["rpc.method"] == "aigw.v1.Completion/Complete"
    ]
    assert _attrs(complete)["rpc.response.status_code"] == "OK"
    assert complete.count == 2
    assert 0 < complete.sum < 5
    assert list(complete.explicit_bounds)[:3] == [0.005, 0.01, 0.025]

    tokens = metrics["gen_ai.client.token.usage"]
    assert (tokens.unit, tokens.WhichOneof("data")) == ("{token}", "histogram")
    assert tokens.histogram.aggregation_temporality == cumulative
    by_type = {_attrs(p)["gen_ai.token.type"]: p for p in tokens.histogram.data_points}
    assert set(by_type) == {"input", "output"}
    for token_type, point in by_type.items():
        assert _attrs(point) == {**GENAI_ECHO, "gen_ai.token.type": token_type}
        assert point.count == 2
    # input: words + 1 per message ("one" 2, "one two" 3); output: the echoed words.
    assert (by_type["input"].sum, by_type["output"].sum) == (5, 3)
    assert (by_type["input"].min, by_type["input"].max) == (2, 3)

    duration = metrics["gen_ai.server.request.duration"]
    assert (duration.unit, duration.WhichOneof("data")) == ("s", "histogram")
    [point] = duration.histogram.data_points
    assert _attrs(point) == GENAI_ECHO  # no error.type: both calls succeeded
    assert point.count == 2

    active = metrics["aigw.server.active_requests"]
    assert (active.unit, active.WhichOneof("data")) == ("{request}", "sum")
    assert not active.sum.is_monotonic
    assert active.sum.aggregation_temporality == cumulative
    values = {_attrs(p)["rpc.method"]: p.as_int for p in active.sum.data_points}
    assert values["aigw.v1.Completion/Complete"] == 0

    exported = metrics["aigw.telemetry.spans.exported"]
    assert (exported.unit, exported.WhichOneof("data")) == ("{span}", "sum")
    assert exported.sum.is_monotonic
    outcomes = {_attrs(p)["outcome"]: p.as_int for p in exported.sum.data_points}
    assert outcomes["success"] >= 4  # the traces were flushed before the metrics
    assert all(set(_attrs(p)) <= {"outcome", "reason"} for p in exported.sum.data_points)
    # Not a priced route, no stream: these have no points, so no metric.
    assert "aigw.usage.cost" not in metrics
    assert "gen_ai.server.time_to_first_token" not in metrics
    for metric in metrics.values():
        assert metric.description, metric.name


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


def _complete_points(
    request: metrics_service_pb2.ExportMetricsServiceRequest,
) -> tuple[list[metrics_pb2.HistogramDataPoint], list[metrics_pb2.HistogramDataPoint]]:
    """(rpc.server.call.duration points of Completion/Complete, input-token points) in one
    export."""
    rpc: list[metrics_pb2.HistogramDataPoint] = []
    tokens: list[metrics_pb2.HistogramDataPoint] = []
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == "rpc.server.call.duration":
                    rpc += [
                        p
                        for p in m.histogram.data_points
                        if _attrs(p)["rpc.method"] == "aigw.v1.Completion/Complete"
                    ]
                elif m.name == "gen_ai.client.token.usage":
                    tokens += [
                        p
                        for p in m.histogram.data_points
                        if _attrs(p)["gen_ai.token.type"] == "input"
                    ]
    return rpc, tokens


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
    """Rounds of 1, 3, 0 and 2 calls, one export after each: delta exports carry each round's
    own counts (1, 3, none, 2), which cumulative data (1, 4, 4, 6) cannot produce."""
    rounds = [1, 3, 0, 2]
    per_export: list[tuple[int | None, int | None, int | None]] = []
    async with clients(gateway) as (completion, admin):
        await admin.SetOtelConfig(
            admin_pb2.SetOtelConfigRequest(
                config=otel_config_pb2.OtelConfig(
                    metrics=exporter(
                        HTTP,
                        PROTO,
                        http_receiver.metrics_url,
                        temporality=temporality,
                        # No periodic export during the test: one export per flush below.
                        export_interval=duration_pb2.Duration(seconds=3600),
                    )
                )
            ),
            timeout=10,
        )
        await flush_metrics(gateway)  # the SetOtelConfig call itself, before the rounds
        for calls in rounds:
            before = len(http_receiver.metric_requests())
            for _ in range(calls):
                await completion.Complete(chat("a b"), timeout=5)
            await flush_metrics(gateway)
            [request] = http_receiver.metric_requests()[before:]
            rpc, tokens = _complete_points(request)
            assert len(rpc) <= 1
            assert len(tokens) <= 1
            per_export.append(
                (
                    rpc[0].count if rpc else None,
                    int(tokens[0].sum) if tokens else None,
                    rpc[0].start_time_unix_nano if rpc else None,
                )
            )
    counts = [count for count, _, _ in per_export]
    token_sums = [total for _, total, _ in per_export]
    starts = [start for _, _, start in per_export if start is not None]
    # "a b" is 3 input tokens (2 words + 1 for the message).
    if expected == metrics_pb2.AGGREGATION_TEMPORALITY_DELTA:
        # A round without calls has no point at all (or a zero one, depending on the SDK).
        assert [c or 0 for c in counts] == [1, 3, 0, 2]
        assert [t or 0 for t in token_sums] == [3, 9, 0, 6]
        # Each delta point starts where the previous export ended.
        assert starts == sorted(starts)
        assert len(set(starts)) == len(starts)
    else:
        assert counts == [1, 4, 4, 6]
        assert token_sums == [3, 12, 12, 18]
        assert len(set(starts)) == 1  # one series start for every export
    assert _temporalities(http_receiver, "gen_ai.client.token.usage") == {expected}
    assert _temporalities(http_receiver, "rpc.server.call.duration") == {expected}
    # Up-down counters stay cumulative even under a delta preference (OTLP spec).
    assert _temporalities(http_receiver, "aigw.server.active_requests") == {
        metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
    }


async def test_switching_under_load_delivers_every_span_exactly_once(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50 switches between three slow receivers (HTTP proto, HTTP JSON, gRPC) while clients
    call: switches land while an export is in flight, every receiver gets spans, and every
    span arrives exactly once."""
    assert gateway.telemetry is not None
    # Exports held by a receiver at the instant of each exporter swap inside the gateway.
    held_at_swap: list[int] = []
    with HttpOtlpReceiver() as a, HttpOtlpReceiver() as b, GrpcOtlpReceiver() as c:
        receivers = (a, b, c)
        for receiver in receivers:
            # A slow backend: each export is held 0.25 s, longer than a switch takes.
            receiver.respond_ok(delay=0.15)
        span_export = gateway.telemetry.span_export
        swap = span_export.swap

        def observed_swap(new: object) -> None:
            held_at_swap.append(sum(r.in_flight for r in receivers))
            swap(new)  # type: ignore[arg-type]

        monkeypatch.setattr(span_export, "swap", observed_swap)
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
            captured = capture(gateway)
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
            (trace_id, span_id) for r in receivers for trace_id, span_id, _ in r.spans()
        )
        assert not a.violations
        assert not b.violations
        per_receiver = [len(r.spans()) for r in receivers]
    assert len(held_at_swap) == 1 + 50  # the first exporter, then the 50 switches
    mid_export = sum(1 for held in held_at_swap[1:] if held)
    assert mid_export >= 10, f"only {mid_export} of 50 switches landed while an export was held"
    assert all(per_receiver), f"spans per receiver: {per_receiver}"
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


@pytest.mark.parametrize("kind", ["http", "grpc"])
async def test_a_backend_that_comes_back_gets_export_again_by_itself(
    gateway: Gateway, kind: str
) -> None:
    """The backend is down (its port refuses), then comes back on the same port: export
    resumes with no change of config."""
    refusing = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    refusing.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    port = refusing.getsockname()[1]
    protocol, endpoint = (
        (HTTP, f"http://127.0.0.1:{port}/v1/traces")
        if kind == "http"
        else (GRPC, f"http://127.0.0.1:{port}")
    )
    try:
        async with clients(gateway) as (completion, admin):
            await admin.SetOtelConfig(
                admin_pb2.SetOtelConfigRequest(
                    config=otel_config_pb2.OtelConfig(
                        traces=exporter(
                            protocol, PROTO, endpoint, timeout=duration_pb2.Duration(seconds=1)
                        )
                    )
                ),
                timeout=10,
            )
            for _ in range(3):
                await completion.Complete(chat("while down"), timeout=5)
            await flush(gateway)
            down = await admin.GetOtelConfig(admin_pb2.GetOtelConfigRequest(), timeout=5)
            assert down.health.traces.failed >= 6
            assert down.health.traces.exported == 0
            assert down.health.traces.last_error.startswith(
                ("connection_refused", "unavailable")
            ), down.health.traces.last_error
            refusing.close()
            receiver_type = HttpOtlpReceiver if kind == "http" else GrpcOtlpReceiver
            with receiver_type(port=port) as receiver:
                loop = asyncio.get_running_loop()
                give_up = loop.time() + 15
                # gRPC reconnects with backoff: a batch or two may still fail meanwhile.
                while True:
                    await completion.Complete(chat("back"), timeout=5)
                    await flush(gateway)
                    if any(n == "aigw.v1.Completion/Complete" for _, _, n in receiver.spans()):
                        break
                    assert loop.time() < give_up, "export never resumed"
                    await asyncio.sleep(0.2)
                up = await admin.GetOtelConfig(admin_pb2.GetOtelConfigRequest(), timeout=5)
        assert up.version == down.version  # nobody re-pointed the exporter
        assert up.config.traces.endpoint == endpoint
        assert up.health.traces.exported > 0
        assert (
            up.health.traces.last_success_time.ToNanoseconds()
            > up.health.traces.last_error_time.ToNanoseconds()
        )
    finally:
        refusing.close()


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
            await asyncio.to_thread(gateway.telemetry.flush_traces, 5)
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
                if fault == "refused":
                    # Its recovery (the same port listening again) is the test above.
                    return
                # Recovery, by itself, once the backend answers again.
                receiver.respond_ok()
                await completion.Complete(chat("back"), timeout=5)
                await flush(gateway)
                health = (
                    await admin.GetOtelConfig(admin_pb2.GetOtelConfigRequest(), timeout=5)
                ).health
            assert health.traces.exported > 0
            assert health.traces.last_success_time.ToNanoseconds() > 0
