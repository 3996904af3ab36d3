"""Fleet mode in one process: several gateways on one PostgreSQL share the OTEL config.

Each gateway here is a full replica (own gRPC server, exporters, state directory, heartbeat);
only the process is shared. `test_fleet_processes.py` does the same with real `aigw serve`
processes, signals and a database restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import psycopg
import pytest
from aigw.v1 import admin_pb2, completion_pb2_grpc, otel_config_pb2

from admin.secret_box import new_key
from gateway.config import StoreConfig
from gateway.server import Gateway
from tests.clients import admin_call, client_for, connect
from tests.conftest import GatewayFactory, chat
from tests.otlp_receivers import HttpOtlpReceiver
from tests.postgres import PostgresCluster

FAST = StoreConfig(
    database_url_env="AIGW_DATABASE_URL", heartbeat_seconds=0.2, replica_forget_seconds=60
)
SECRET = "fleet-secret-value-4f9a"
# Generous: the promise is "within 1 s"; timing is measured in the benchmark, not asserted.
CONVERGE_SECONDS = 15.0

Fleet = Callable[..., Awaitable[list[Gateway]]]


# tests/test_export_tls_config.py imports `call` from here; it is tests.clients.admin_call.
call = admin_call


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + CONVERGE_SECONDS
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {CONVERGE_SECONDS}s: {what}")
        await asyncio.sleep(0.05)


def traces_section(endpoint: str, **kw: object) -> otel_config_pb2.OtelConfig:
    return otel_config_pb2.OtelConfig(
        traces=otel_config_pb2.ExporterConfig(endpoint=endpoint, **{"enabled": True, **kw})
    )


@pytest.fixture
def fleet_env(database_url: str) -> dict[str, str]:
    return {"AIGW_DATABASE_URL": database_url, "AIGW_CONFIG_KEY": new_key()}


@pytest.fixture
async def fleet(gateway_factory: GatewayFactory, fleet_env: dict[str, str]) -> Fleet:
    async def start(n: int, env: dict[str, str] | None = None, **kw: object) -> list[Gateway]:
        return [await gateway_factory(env=env or fleet_env, store=FAST, **kw) for _ in range(n)]

    return start


async def versions(gateways: list[Gateway]) -> list[int]:
    out = []
    for gw in gateways:
        response = await admin_call(gw, "GetOtelConfig", admin_pb2.GetOtelConfigRequest())
        out.append(response.version)
    return out


async def test_a_set_on_one_replica_is_applied_by_every_replica(fleet: Fleet) -> None:
    gws = await fleet(3)
    with HttpOtlpReceiver() as receiver:
        set_response = await admin_call(
            gws[0],
            "SetOtelConfig",
            admin_pb2.SetOtelConfigRequest(config=traces_section(receiver.traces_url)),
        )
        assert set_response.version == 1

        async def all_applied() -> bool:
            return await versions(gws) == [1, 1, 1]

        await eventually(all_applied, "every replica on version 1")
        # Applied means exporting: a call on each replica reaches the receiver.
        for gw in gws:
            async with connect(gw) as ch:
                await completion_pb2_grpc.CompletionStub(ch).Complete(chat("x"), timeout=5)
        await asyncio.to_thread(receiver.wait_for_requests, 1, 10)

        async def three_instances_exported() -> bool:
            instances = {
                attr.value.string_value
                for request in receiver.trace_requests()
                for rs in request.resource_spans
                for attr in rs.resource.attributes
                if attr.key == "service.instance.id"
            }
            return instances >= {gw.instance_id for gw in gws}

        await eventually(three_instances_exported, "spans from all three replicas")

        async def converged() -> bool:
            listing = await admin_call(gws[2], "ListReplicas", admin_pb2.ListReplicasRequest())
            return listing.converged and listing.current_version == 1

        await eventually(converged, "ListReplicas converged on version 1")
        listing = await admin_call(gws[2], "ListReplicas", admin_pb2.ListReplicasRequest())
    assert {r.instance_id for r in listing.replicas} == {gw.instance_id for gw in gws}
    assert all(r.state == admin_pb2.REPLICA_STATE_LIVE for r in listing.replicas)
    assert [r.self for r in listing.replicas].count(True) == 1
    me = next(r for r in listing.replicas if r.self)
    assert me.instance_id == gws[2].instance_id
    assert me.address == f"127.0.0.1:{gws[2].port}"
    assert all(r.applied_version == 1 for r in listing.replicas)


async def test_concurrent_sets_with_one_expected_version_exactly_one_wins(fleet: Fleet) -> None:
    gws = await fleet(3)
    clients = [(await client_for(gw))[1] for gw in gws]
    try:

        async def attempt(i: int) -> grpc.StatusCode:
            request = admin_pb2.SetOtelConfigRequest(
                config=traces_section(f"http://127.0.0.1:{4000 + i}/v1/traces", enabled=False),
                expected_version=0,
            )
            try:
                await clients[i % 3].admin.SetOtelConfig(request, timeout=10)
            except grpc.aio.AioRpcError as e:
                return e.code()
            return grpc.StatusCode.OK

        codes = await asyncio.gather(*(attempt(i) for i in range(12)))
    finally:
        for client in clients:
            await client.channel.close()
    assert codes.count(grpc.StatusCode.OK) == 1
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION}
    history = await admin_call(
        gws[1], "ListOtelConfigHistory", admin_pb2.ListOtelConfigHistoryRequest()
    )
    assert [v.version for v in history.versions] == [1]


async def test_history_and_rollback_restore_secrets(
    fleet: Fleet, fleet_env: dict[str, str]
) -> None:
    gws = await fleet(2)
    with HttpOtlpReceiver() as first, HttpOtlpReceiver() as second:
        await admin_call(
            gws[0],
            "SetOtelConfig",
            admin_pb2.SetOtelConfigRequest(
                config=traces_section(first.traces_url, headers={"x-api-key": SECRET})
            ),
        )
        await admin_call(
            gws[1],
            "SetOtelConfig",
            admin_pb2.SetOtelConfigRequest(config=traces_section(second.traces_url)),
        )
        history = await admin_call(
            gws[0], "ListOtelConfigHistory", admin_pb2.ListOtelConfigHistoryRequest()
        )
        assert [v.version for v in history.versions] == [2, 1]
        assert [v.action for v in history.versions] == ["set", "set"]
        assert all(v.author.startswith("127.0.0.1:") for v in history.versions)
        assert dict(history.versions[1].config.traces.headers) == {"x-api-key": "********"}
        assert SECRET not in str(history)

        # Paging: one per page, then the end.
        page = await admin_call(
            gws[0], "ListOtelConfigHistory", admin_pb2.ListOtelConfigHistoryRequest(page_size=1)
        )
        assert [v.version for v in page.versions] == [2]
        assert page.next_before_version == 2
        page = await admin_call(
            gws[0],
            "ListOtelConfigHistory",
            admin_pb2.ListOtelConfigHistoryRequest(page_size=1, before_version=2),
        )
        assert [v.version for v in page.versions] == [1]
        assert page.next_before_version == 0

        rolled = await admin_call(
            gws[1],
            "RollbackOtelConfig",
            admin_pb2.RollbackOtelConfigRequest(version=1, expected_version=2),
        )
        assert rolled.version == 3
        assert rolled.config.traces.endpoint == first.traces_url

        async def both_on_3() -> bool:
            return await versions(gws) == [3, 3]

        await eventually(both_on_3, "both replicas on the rollback")
        # The secret came back with the rollback: the backend receives it from both replicas.
        first.clear()
        for gw in gws:
            async with connect(gw) as ch:
                await completion_pb2_grpc.CompletionStub(ch).Complete(chat("y"), timeout=5)
        records = await asyncio.to_thread(first.wait_for_requests, 1, 10)
        assert all(r.headers.get("x-api-key") == SECRET for r in records)

    history = await admin_call(
        gws[0], "ListOtelConfigHistory", admin_pb2.ListOtelConfigHistoryRequest()
    )
    assert history.versions[0].action == "rollback"
    assert history.versions[0].restored_version == 1

    # A stale rollback changes nothing; an unknown version is NOT_FOUND.
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await admin_call(
            gws[0],
            "RollbackOtelConfig",
            admin_pb2.RollbackOtelConfigRequest(version=2, expected_version=2),
        )
    assert stale.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await admin_call(
            gws[0], "RollbackOtelConfig", admin_pb2.RollbackOtelConfigRequest(version=99)
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "version" in (unknown.value.details() or "")

    # At rest the secret is ciphertext: no plain column holds it.
    with psycopg.connect(fleet_env["AIGW_DATABASE_URL"]) as conn:
        rows = conn.execute("SELECT row_to_json(c)::text FROM aigw_otel_config c").fetchall()
    assert len(rows) == 3
    assert not any(SECRET in text for (text,) in rows)
    assert any('"x-api-key"' in text for (text,) in rows)


async def test_without_an_encryption_key_secrets_are_refused(
    fleet: Fleet, database_url: str
) -> None:
    (gw,) = await fleet(1, env={"AIGW_DATABASE_URL": database_url})
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await admin_call(
            gw,
            "SetOtelConfig",
            admin_pb2.SetOtelConfigRequest(
                config=traces_section(
                    "http://127.0.0.1:4318/v1/traces", headers={"x-api-key": SECRET}
                )
            ),
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "AIGW_CONFIG_KEY" in (refused.value.details() or "")
    assert SECRET not in (refused.value.details() or "")
    response = await admin_call(gw, "GetOtelConfig", admin_pb2.GetOtelConfigRequest())
    assert response.version == 0  # nothing changed
    assert not response.config.traces.enabled
    # Without header values a key is not needed.
    ok = await admin_call(
        gw,
        "SetOtelConfig",
        admin_pb2.SetOtelConfigRequest(
            config=traces_section("http://127.0.0.1:4318/v1/traces", enabled=False)
        ),
    )
    assert ok.version == 1


async def test_replicas_that_stop_are_shown_gone_then_forgotten(
    gateway_factory: GatewayFactory, fleet_env: dict[str, str]
) -> None:
    store = StoreConfig(
        database_url_env="AIGW_DATABASE_URL", heartbeat_seconds=0.2, replica_forget_seconds=1
    )
    stays = await gateway_factory(env=fleet_env, store=store)
    leaves = await gateway_factory(env=fleet_env, store=store)

    async def listed() -> dict[str, int]:
        listing = await admin_call(stays, "ListReplicas", admin_pb2.ListReplicasRequest())
        return {r.instance_id: r.state for r in listing.replicas}

    async def both_live() -> bool:
        return (
            set((await listed()).values()) == {admin_pb2.REPLICA_STATE_LIVE}
            and len(await listed()) == 2
        )

    await eventually(both_live, "two live replicas")
    await leaves.stop(grace=0.1)
    states = await listed()
    assert states[leaves.instance_id] == admin_pb2.REPLICA_STATE_GONE  # at once, on a clean stop
    assert states[stays.instance_id] == admin_pb2.REPLICA_STATE_LIVE

    async def forgotten() -> bool:
        return leaves.instance_id not in await listed()

    await eventually(forgotten, "the stopped replica forgotten")


async def test_a_replica_whose_database_is_down_at_start_serves_on_its_cached_config(
    gateway_factory: GatewayFactory,
    fleet_env: dict[str, str],
    pg_cluster: PostgresCluster,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = tmp_path / "replica"
    first = await gateway_factory(state_dir=state, env=fleet_env, store=FAST)
    await admin_call(
        first,
        "SetOtelConfig",
        admin_pb2.SetOtelConfigRequest(
            config=traces_section("http://127.0.0.1:4999/v1/traces", enabled=False)
        ),
    )
    await first.stop(grace=0.1)
    pg_cluster.stop()
    try:
        again = await gateway_factory(state_dir=state, env=fleet_env, store=FAST)
        response = await admin_call(again, "GetOtelConfig", admin_pb2.GetOtelConfigRequest())
        assert response.version == 1
        assert response.config.traces.endpoint == "http://127.0.0.1:4999/v1/traces"
        assert response.store.backend == "postgres"
        assert not response.store.connected
        assert response.store.last_error
        assert pg_cluster.password not in response.store.last_error
        assert "cached config" in caplog.text
        # It serves.
        async with connect(again) as ch:
            answer = await completion_pb2_grpc.CompletionStub(ch).Complete(chat("hi"), timeout=5)
        assert answer.content == "hi"
        # A change cannot be made while the store is away, and nothing changes.
        with pytest.raises(grpc.aio.AioRpcError) as down:
            await admin_call(
                again,
                "SetOtelConfig",
                admin_pb2.SetOtelConfigRequest(config=traces_section("http://127.0.0.1:1/x")),
            )
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE
        assert pg_cluster.password not in (down.value.details() or "")
    finally:
        pg_cluster.start()

    async def reconnected() -> bool:
        response = await admin_call(again, "GetOtelConfig", admin_pb2.GetOtelConfigRequest())
        return response.store.connected

    await eventually(reconnected, "the store reconnected")
    assert pg_cluster.password not in caplog.text


async def test_a_missing_database_variable_stops_start_up(
    gateway_factory: GatewayFactory,
) -> None:
    from gateway.backends import BackendError

    with pytest.raises(BackendError, match="AIGW_DATABASE_URL"):
        await gateway_factory(env={}, store=FAST)
