"""The server as operators meet it: reflection, health, start-up errors, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import grpc
from aigw.v1 import completion_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.conftest import chat

_LISTENING = re.compile(r"serving gRPC on [\d.]+:(\d+), metrics on http://[\d.]+:(\d+)/metrics")


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


async def _start_process(*args: str, state_dir: Path) -> tuple[asyncio.subprocess.Process, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--state-dir",
        str(state_dir),
        *args,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stderr is not None
    async with asyncio.timeout(20):
        while True:
            line = (await proc.stderr.readline()).decode()
            assert line, "gateway exited before listening"
            if match := _LISTENING.search(line):
                return proc, int(match.group(1))


async def test_sigterm_lets_a_stream_in_flight_finish_then_exits_0(
    tmp_path: Path,
) -> None:
    config = tmp_path / "aigw.toml"
    config.write_text(
        "[server]\ngrace_period_seconds = 10\n"
        '[routes.slow]\nprovider = "echo"\ntoken_delay_ms = 100\n'
    )
    proc, port = await _start_process("--config", str(config), state_dir=tmp_path / "state")
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
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


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
    )
    async with asyncio.timeout(20):
        _, err = await proc.communicate()
    text = err.decode()
    assert proc.returncode == 2
    assert f"{config}: routes.x.timeout_seconds: must be between" in text
    assert f"{config}: routes.x.bogus: unknown key" in text
    assert f"{config}: routes.x.base_url: required for provider openai" in text
    assert "Traceback" not in text
