"""Shared fixtures: real gateways on ephemeral loopback ports, with a state dir per test."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from aigw.v1 import admin_pb2_grpc, completion_pb2, completion_pb2_grpc

from gateway.config import GatewayConfig, RouteConfig, ServerConfig, StoreConfig, TelemetryConfig
from gateway.server import Gateway
from tests.openai_stub import openai_stub  # noqa: F401 - a fixture for the whole suite
from tests.otlp_receivers import GrpcOtlpReceiver, HttpOtlpReceiver
from tests.postgres import PostgresCluster

GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's OTEL_* and AIGW_* variables must not change results: the SDK reads
    OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER … in-process (gateway processes get clean_env())."""
    for name in list(os.environ):
        if name.startswith(("OTEL_", "AIGW_")):
            monkeypatch.delenv(name)


def make_config(
    state_dir: Path,
    *,
    routes: Mapping[str, RouteConfig] | None = None,
    telemetry: TelemetryConfig | None = None,
    store: StoreConfig | None = None,
    **server: Any,
) -> GatewayConfig:
    base = GatewayConfig()
    return GatewayConfig(
        server=ServerConfig(
            listen="127.0.0.1:0",
            metrics_listen="127.0.0.1:0",
            state_dir=state_dir,
            grace_period_seconds=server.pop("grace_period_seconds", 2.0),
            **server,
        ),
        telemetry=telemetry or TelemetryConfig(),
        store=store or StoreConfig(),
        routes=routes if routes is not None else base.routes,
    )


@pytest.fixture
async def gateway_factory(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    started: list[Gateway] = []

    async def start(
        state_dir: Path | None = None, env: Mapping[str, str] | None = None, **kwargs: Any
    ) -> Gateway:
        config = make_config(state_dir or tmp_path / f"state{len(started)}", **kwargs)
        gw = Gateway(config, env=env if env is not None else {})
        started.append(gw)
        await gw.start()
        return gw

    yield start
    for gw in reversed(started):
        await gw.stop(grace=0.5)


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> Gateway:
    return await gateway_factory()


@pytest.fixture
async def channel(gateway: Gateway) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
        yield ch


@pytest.fixture
def completion(channel: grpc.aio.Channel) -> completion_pb2_grpc.CompletionStub:
    return completion_pb2_grpc.CompletionStub(channel)


@pytest.fixture
def admin(channel: grpc.aio.Channel) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(channel)


def chat(
    text: str = "hello there", model: str = "echo", **kwargs: Any
) -> completion_pb2.CompleteRequest:
    return completion_pb2.CompleteRequest(
        model=model, messages=[completion_pb2.Message(role="user", content=text)], **kwargs
    )


def replace_route(route: RouteConfig, **changes: Any) -> RouteConfig:
    return dataclasses.replace(route, **changes)


@pytest.fixture
def http_rx() -> Iterator[HttpOtlpReceiver]:
    """An OTLP/HTTP receiver; leaving it asserts that no request handler raised."""
    with HttpOtlpReceiver() as rx:
        yield rx


@pytest.fixture
def grpc_rx() -> Iterator[GrpcOtlpReceiver]:
    """An OTLP/gRPC receiver; leaving it asserts that no call handler raised."""
    with GrpcOtlpReceiver() as rx:
        yield rx


@pytest.fixture
def start_gateway(
    http_rx: HttpOtlpReceiver, grpc_rx: GrpcOtlpReceiver, gateway_factory: GatewayFactory
) -> GatewayFactory:
    """gateway_factory (explicit `env`, default empty), set up after both receivers so that it
    is torn down before them: the final flush at stop must find them listening."""
    return gateway_factory


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """One PostgreSQL server for the session; each test takes its own database from it."""
    cluster = PostgresCluster()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def database_url(pg_cluster: PostgresCluster) -> str:
    return pg_cluster.create_database()
