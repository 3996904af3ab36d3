"""Three `aigw serve` processes on one PostgreSQL: the fleet as an operator runs it.

Config set on one replica reaches the others; traces served by each are listed on every
other; the database stopped and restarted under steady load fails no Completion call, and a
change made after it returns still reaches all three; no secret reaches a log.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import grpc
from aigw.v1 import admin_pb2, completion_pb2_grpc, otel_config_pb2

from admin.secret_box import new_key
from tests.clients import admin_call, bearer, connect
from tests.conftest import chat
from tests.otlp_receivers import HttpOtlpReceiver
from tests.postgres import PostgresCluster
from tests.processes import start_gateway_process, stop_process

SECRET = "proc-fleet-secret-9d2c71"
ADMIN_TOKEN = "fleet-admin-token-5b1e0f"
BOUND = 20.0  # generous: convergence time is a benchmark's business, not a test's

CONFIG = """
[store]
database_url_env = "AIGW_DATABASE_URL"
heartbeat_seconds = 0.25
"""


AUTH = bearer(ADMIN_TOKEN)


async def _until(check: object, what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not await check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {BOUND}s: {what}")
        await asyncio.sleep(0.1)


async def _versions(ports: list[int]) -> list[int]:
    return [
        (
            await admin_call(p, "GetOtelConfig", admin_pb2.GetOtelConfigRequest(), metadata=AUTH)
        ).version
        for p in ports
    ]


async def test_a_fleet_of_three_processes(tmp_path: Path, pg_cluster: PostgresCluster) -> None:
    url = pg_cluster.create_database("fleet")
    key = new_key()
    config = tmp_path / "aigw.toml"
    config.write_text(CONFIG)
    env = {"AIGW_DATABASE_URL": url, "AIGW_CONFIG_KEY": key, "AIGW_ADMIN_TOKEN": ADMIN_TOKEN}
    procs = []
    try:
        for i in range(3):
            procs.append(
                await start_gateway_process(
                    "--config", str(config), state_dir=tmp_path / f"r{i}", env=env
                )
            )
        ports = [port for _, port, _ in procs]

        with HttpOtlpReceiver() as receiver:
            # 1. A Set on one replica is applied by all three.
            section = otel_config_pb2.ExporterConfig(
                enabled=True, endpoint=receiver.traces_url, headers={"x-api-key": SECRET}
            )
            await admin_call(
                ports[0],
                "SetOtelConfig",
                admin_pb2.SetOtelConfigRequest(config=otel_config_pb2.OtelConfig(traces=section)),
                metadata=AUTH,
            )

            async def on_v1() -> bool:
                return await _versions(ports) == [1, 1, 1]

            await _until(on_v1, "all three replicas on version 1")
            history = await admin_call(
                ports[2],
                "ListOtelConfigHistory",
                admin_pb2.ListOtelConfigHistoryRequest(),
                metadata=AUTH,
            )
            assert history.versions[0].author == "admin"  # the token's name, never the token

            # 2. Traces served by each replica are listed on every other.
            for port in ports:
                async with connect(port) as ch:
                    stub = completion_pb2_grpc.CompletionStub(ch)
                    await stub.Complete(chat(f"from {port}", model="echo"), timeout=5)
            listing = await admin_call(
                ports[0], "ListReplicas", admin_pb2.ListReplicasRequest(), metadata=AUTH
            )
            instances = {r.instance_id for r in listing.replicas}
            assert len(instances) == 3

            for port in ports:

                async def all_replicas_listed(port: int = port) -> bool:
                    page = await admin_call(
                        port, "ListTraces", admin_pb2.ListTracesRequest(model="echo"), metadata=AUTH
                    )
                    return {t.replica for t in page.traces} >= instances

                await _until(all_replicas_listed, f"traces of all replicas listed on {port}")

            # 3. The database goes away under steady load and comes back: no call fails.
            failures: list[str] = []
            served = 0
            stop = asyncio.Event()

            async def load() -> None:
                nonlocal served
                channels = [connect(p) for p in ports]
                stubs = [completion_pb2_grpc.CompletionStub(c) for c in channels]
                try:
                    for stub in itertools.cycle(stubs):
                        if stop.is_set():
                            break
                        try:
                            await stub.Complete(chat("steady"), timeout=5)
                            served += 1
                        except grpc.aio.AioRpcError as e:
                            failures.append(f"{e.code()}: {e.details()}")
                        await asyncio.sleep(0.005)
                finally:
                    for c in channels:
                        await c.close()

            task = asyncio.create_task(load())
            await asyncio.sleep(0.5)
            await asyncio.to_thread(pg_cluster.stop)
            try:
                await asyncio.sleep(2.0)
                down = await admin_call(
                    ports[1], "GetOtelConfig", admin_pb2.GetOtelConfigRequest(), metadata=AUTH
                )
                assert not down.store.connected
            finally:
                await asyncio.to_thread(pg_cluster.start)
            await asyncio.sleep(1.0)
            stop.set()
            await task
            assert failures == []
            assert served > 50

            # 4. A Set made after the restart reaches all three.
            section.compression = otel_config_pb2.COMPRESSION_GZIP
            section.headers.clear()
            section.headers["x-api-key"] = "********"  # the mask keeps the stored value
            await admin_call(
                ports[1],
                "SetOtelConfig",
                admin_pb2.SetOtelConfigRequest(config=otel_config_pb2.OtelConfig(traces=section)),
                metadata=AUTH,
            )

            async def on_v2() -> bool:
                return await _versions(ports) == [2, 2, 2]

            await _until(on_v2, "all three replicas on version 2 after the database restart")

            async def converged() -> bool:
                listing = await admin_call(
                    ports[2], "ListReplicas", admin_pb2.ListReplicasRequest(), metadata=AUTH
                )
                return listing.converged and listing.current_version == 2

            await _until(converged, "ListReplicas converged on 2")
            receiver.clear()
            for port in ports:
                async with connect(port) as ch:
                    await completion_pb2_grpc.CompletionStub(ch).Complete(chat("z"), timeout=5)
            records = await asyncio.to_thread(receiver.wait_for_requests, 1, 10)
            assert all(r.headers.get("x-api-key") == SECRET for r in records)
            assert all(r.content_encoding == "gzip" for r in records)

            # 5. A replica killed with -9 stops heartbeating: the others show it gone, and
            # the fleet is still converged without it.
            victim = procs[2][0]
            victim.kill()
            await victim.wait()

            async def shown_gone() -> bool:
                listing = await admin_call(
                    ports[0], "ListReplicas", admin_pb2.ListReplicasRequest(), metadata=AUTH
                )
                states = {r.address: r.state for r in listing.replicas}
                return (
                    states.get(f"127.0.0.1:{ports[2]}") == admin_pb2.REPLICA_STATE_GONE
                    and listing.converged
                )

            await _until(shown_gone, "the killed replica shown gone")
    finally:
        for proc, _, _ in procs:
            await stop_process(proc)
    logs = "".join(line for proc, _, _ in procs for line in proc.log_lines)  # type: ignore[attr-defined]
    for secret in (SECRET, ADMIN_TOKEN, key, pg_cluster.password, url):
        assert secret not in logs
    assert "config store unreachable" in logs  # each replica said so
