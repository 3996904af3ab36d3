"""AdminService ListTraces / GetTrace over real gRPC, on traces the gateway itself recorded
(embedded SQLite, and a fleet of two replicas sharing a real PostgreSQL)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from aigw.v1 import admin_pb2, admin_pb2_grpc, completion_pb2_grpc, traces_pb2
from google.protobuf import duration_pb2

from admin.secret_box import new_key
from gateway.config import RouteConfig, StoreConfig
from gateway.server import Gateway
from tests.conftest import GatewayFactory, chat
from tests.postgres import PostgresCluster


@pytest.fixture
async def gw(gateway_factory: GatewayFactory) -> Gateway:
    routes = {
        "fast": RouteConfig(name="fast", provider="echo", model="echo-1"),
        "slow": RouteConfig(name="slow", provider="echo", model="echo-1", latency_ms=120),
    }
    gw = await gateway_factory(routes=routes)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as ch:
        stub = completion_pb2_grpc.CompletionStub(ch)
        for _ in range(5):
            await stub.Complete(chat(model="fast"), timeout=5)
        for _ in range(2):
            await stub.Complete(chat(model="slow"), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Complete(chat(model="fast", max_tokens=-3), timeout=5)
    assert gw.telemetry is not None
    assert await asyncio.to_thread(gw.telemetry.flush_traces, 5)
    return gw


async def _list(gw: Gateway, **kwargs: object) -> admin_pb2.ListTracesResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as ch:
        admin = admin_pb2_grpc.AdminServiceStub(ch)
        return await admin.ListTraces(admin_pb2.ListTracesRequest(**kwargs), timeout=5)


async def test_filters_by_model_status_and_duration(gw: Gateway) -> None:
    everything = await _list(gw, page_size=100)
    completes = [t for t in everything.traces if t.root_span_name == "aigw.v1.Completion/Complete"]
    assert len(completes) == 8
    assert gw.telemetry is not None
    assert {t.replica for t in completes} == {
        gw.telemetry.resource.attributes["service.instance.id"]
    }
    starts = [t.start_time.ToNanoseconds() for t in everything.traces]
    assert starts == sorted(starts, reverse=True)

    slow = await _list(gw, model="slow", page_size=100)
    assert len(slow.traces) == 2
    assert all(t.duration.ToNanoseconds() >= 120_000_000 for t in slow.traces)

    long_ones = await _list(gw, min_duration=duration_pb2.Duration(nanos=100_000_000))
    assert {t.model for t in long_ones.traces} == {"slow"}

    errors = await _list(gw, status=traces_pb2.TRACE_STATUS_FILTER_ERROR, page_size=100)
    [bad] = errors.traces
    assert bad.rpc_status_code == "INVALID_ARGUMENT"
    assert bad.status == "ERROR"
    ok = await _list(gw, status=traces_pb2.TRACE_STATUS_FILTER_OK, page_size=100)
    assert bad.trace_id not in {t.trace_id for t in ok.traces}

    newest = everything.traces[0].start_time
    later = await _list(gw, start_time_min=newest)
    # The newest trace, then only what came after it: the admin calls made since (a query
    # sees every call finished before it).
    assert later.traces[-1].trace_id == everything.traces[0].trace_id
    assert all(t.root_span_name.startswith("aigw.v1.AdminService/") for t in later.traces[:-1])


async def test_pages_cover_everything_once(gw: Gateway) -> None:
    # One route's traces: the listing calls themselves add admin traces as they go.
    full = [t.trace_id for t in (await _list(gw, model="fast", page_size=100)).traces]
    assert len(full) >= 5
    seen: list[str] = []
    token = ""
    while True:
        page = await _list(gw, model="fast", page_size=2, page_token=token)
        seen += [t.trace_id for t in page.traces]
        token = page.next_page_token
        if not token:
            break
    assert seen == full


async def test_get_trace_and_its_errors(gw: Gateway) -> None:
    listed = await _list(gw, model="slow", page_size=1)
    trace_id = listed.traces[0].trace_id
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as ch:
        admin = admin_pb2_grpc.AdminServiceStub(ch)
        got = await admin.GetTrace(admin_pb2.GetTraceRequest(trace_id=trace_id), timeout=5)
        names = [s.name for s in got.spans]
        assert names == ["aigw.v1.Completion/Complete", "chat echo-1"]
        server, client = got.spans
        assert client.parent_span_id == server.span_id
        assert server.kind == "SERVER"
        assert client.kind == "CLIENT"
        assert client.attributes.fields["gen_ai.usage.output_tokens"].number_value == 2
        assert server.attributes.fields["aigw.route"].string_value == "slow"
        for bad, code in (
            ("xyz", grpc.StatusCode.INVALID_ARGUMENT),
            ("0" * 32, grpc.StatusCode.NOT_FOUND),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await admin.GetTrace(admin_pb2.GetTraceRequest(trace_id=bad), timeout=5)
            assert info.value.code() is code
            assert info.value.details().startswith("trace_id:")
        for request, field in (
            (admin_pb2.ListTracesRequest(page_token="not-a-token"), "page_token"),
            (admin_pb2.ListTracesRequest(page_size=5000), "page_size"),
            (admin_pb2.ListTracesRequest(status=9), "status"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await admin.ListTraces(request, timeout=5)
            assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details().startswith(field), info.value.details()


async def test_fleet_replicas_list_each_others_traces_and_say_unavailable(
    gateway_factory: GatewayFactory, database_url: str, pg_cluster: PostgresCluster
) -> None:
    env = {"AIGW_DATABASE_URL": database_url, "AIGW_CONFIG_KEY": new_key()}
    store = StoreConfig(database_url_env="AIGW_DATABASE_URL", heartbeat_seconds=0.2)
    a = await gateway_factory(env=env, store=store)
    b = await gateway_factory(env=env, store=store)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as ch:
        await completion_pb2_grpc.CompletionStub(ch).Complete(chat(), timeout=5)
    assert a.telemetry is not None
    assert await asyncio.to_thread(a.telemetry.flush_traces, 5)
    replica_a = a.telemetry.resource.attributes["service.instance.id"]

    listed = await _list(b, page_size=100)
    [served] = [t for t in listed.traces if t.root_span_name == "aigw.v1.Completion/Complete"]
    assert served.replica == replica_a

    pg_cluster.stop()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{b.port}") as ch:
            admin = admin_pb2_grpc.AdminServiceStub(ch)
            for call in (
                admin.ListTraces(admin_pb2.ListTracesRequest(), timeout=20),
                admin.GetTrace(admin_pb2.GetTraceRequest(trace_id=served.trace_id), timeout=20),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call
                assert info.value.code() is grpc.StatusCode.UNAVAILABLE
                assert f"127.0.0.1:{pg_cluster.port}" in info.value.details()
                assert pg_cluster.password not in info.value.details()
    finally:
        pg_cluster.start()
    again = await _list(b, page_size=100)
    assert served.trace_id in {t.trace_id for t in again.traces}
