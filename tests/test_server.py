"""The server as operators meet it: reflection, health, start-up errors, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import grpc
import pytest
from aigw.v1 import admin_pb2, admin_pb2_grpc, completion_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.conftest import chat
from tests.otlp_receivers import HttpOtlpReceiver
from tests.processes import clean_env, start_gateway_process, stop_process


async def test_reflection_lists_both_services(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    services = set()
    async for response in stub.ServerReflectionInfo(requests()):
        services |= {s.name for s in response.list_services_response.service}
    assert {"aigw.v1.Completion", "aigw.v1.AdminService", "grpc.health.v1.Health"} <= services


async def test_health_is_serving(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "aigw.v1.Completion", "aigw.v1.AdminService"):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_sigterm_lets_a_stream_in_flight_finish_then_exits_0(
    tmp_path: Path,
) -> None:
    config = tmp_path / "aigw.toml"
    config.write_text(
        "[server]\ngrace_period_seconds = 10\n"
        '[routes.slow]\nprovider = "echo"\ntoken_delay_ms = 100\n'
    )
    proc, port, _ = await start_gateway_process(
        "--config", str(config), state_dir=tmp_path / "state"
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = completion_pb2_grpc.CompletionStub(ch)
            words = " ".join(f"w{i}" for i in range(15))
            stream = stub.StreamComplete(chat(words, model="slow"), timeout=20)
            first = await stream.read()
            assert first.delta == "w0"
            proc.send_signal(signal.SIGTERM)
            rest = []
            while (chunk := await stream.read()) is not grpc.aio.EOF:
                rest.append(chunk)
            assert "".join([first.delta, *(c.delta for c in rest)]) == words
            assert rest[-1].finish_reason == "stop"
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
    finally:
        await stop_process(proc)


async def test_a_bad_config_stops_start_up_naming_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[routes.x]\nprovider = "openai"\ntimeout_seconds = -1\nbogus = 1\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--config",
        str(config),
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )
    async with asyncio.timeout(20):
        _, err = await proc.communicate()
    text = err.decode()
    assert proc.returncode == 2
    assert f"{config}: routes.x.timeout_seconds: must be between" in text
    assert f"{config}: routes.x.bogus: unknown key" in text
    assert f"{config}: routes.x.base_url: required for provider openai" in text
    assert "Traceback" not in text


async def test_gateway_processes_ignore_the_callers_otel_and_aigw_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a CI runner or an operator's shell exports must not reach a gateway under test."""
    with HttpOtlpReceiver() as receiver:
        # Each of these would change what the gateway does, if it saw them.
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.traces_url)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "not-aigw")
        monkeypatch.setenv("AIGW_ADMIN_TOKEN", "an-operators-admin-token")
        monkeypatch.setenv("AIGW_API_KEYS", "an-operators-client-key")
        proc, port, _ = await start_gateway_process(state_dir=tmp_path / "state")
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                # No API keys: Completion is open. No admin token: loopback may administer.
                reply = await completion_pb2_grpc.CompletionStub(ch).Complete(
                    chat("open"), timeout=5
                )
                assert reply.content == "open"
                got = await admin_pb2_grpc.AdminServiceStub(ch).GetOtelConfig(
                    admin_pb2.GetOtelConfigRequest(), timeout=5
                )
            # No exporter was seeded from OTEL_*: export is off.
            assert not got.config.traces.enabled
            assert not got.config.traces.endpoint
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                assert await proc.wait() == 0
        finally:
            await stop_process(proc)
        assert receiver.requests == []
