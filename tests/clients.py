"""One set of channel and stub helpers for tests that talk to a gateway over gRPC.

A target is a `Gateway` (in-process) or a port (a gateway process); every channel goes to
127.0.0.1 without TLS (TLS listener tests build their own credentials).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from aigw.v1 import admin_pb2, admin_pb2_grpc, completion_pb2_grpc, otel_config_pb2

from gateway.server import Gateway
from tests.conftest import chat

Target = Gateway | int
Metadata = Sequence[tuple[str, str]] | None

__all__ = [
    "Client",
    "admin_call",
    "bearer",
    "client_for",
    "complete",
    "connect",
    "open_client",
    "rejected",
    "target_address",
    "traceparent",
]


def target_address(target: Target) -> str:
    port = target if isinstance(target, int) else target.port
    return f"127.0.0.1:{port}"


def connect(target: Target) -> grpc.aio.Channel:
    """An insecure aio channel to the gateway; use it as `async with connect(gw) as ch:`."""
    return grpc.aio.insecure_channel(target_address(target))


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying an admin token."""
    return (("authorization", f"Bearer {token}"),)


def traceparent(trace_id: str) -> list[tuple[str, str]]:
    """Call metadata that makes `trace_id` the trace of the call (a sampled remote parent)."""
    return [("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01")]


class Client:
    """Admin and Completion stubs on one channel to a gateway, with the calls tests repeat."""

    def __init__(self, channel: grpc.aio.Channel, metadata: Metadata = None) -> None:
        self.channel = channel
        self.admin = admin_pb2_grpc.AdminServiceStub(channel)
        self.completion = completion_pb2_grpc.CompletionStub(channel)
        self.metadata = metadata

    async def get(self) -> admin_pb2.GetOtelConfigResponse:
        return await self.admin.GetOtelConfig(
            admin_pb2.GetOtelConfigRequest(), metadata=self.metadata, timeout=5
        )

    async def set(
        self, config: otel_config_pb2.OtelConfig, expected_version: int | None = None
    ) -> admin_pb2.SetOtelConfigResponse:
        request = admin_pb2.SetOtelConfigRequest(config=config)
        if expected_version is not None:
            request.expected_version = expected_version
        return await self.admin.SetOtelConfig(request, metadata=self.metadata, timeout=10)

    async def test(self, config: otel_config_pb2.OtelConfig) -> admin_pb2.TestOtelConfigResponse:
        return await self.admin.TestOtelConfig(
            admin_pb2.TestOtelConfigRequest(config=config), metadata=self.metadata, timeout=20
        )

    async def complete(self, trace_id: str | None = None, text: str = "ping") -> None:
        metadata = traceparent(trace_id) if trace_id else None
        await self.completion.Complete(chat(text), metadata=metadata, timeout=5)


async def client_for(target: Target, metadata: Metadata = None) -> tuple[grpc.aio.Channel, Client]:
    """A channel (close it: `async with channel:`) and a Client on it."""
    channel = connect(target)
    return channel, Client(channel, metadata)


@asynccontextmanager
async def open_client(target: Target, metadata: Metadata = None) -> AsyncIterator[Client]:
    async with connect(target) as channel:
        yield Client(channel, metadata)


async def admin_call(
    target: Target, method: str, request: Any, *, metadata: Metadata = None, timeout: float = 10
) -> Any:
    """One AdminService call on a channel of its own."""
    async with connect(target) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        return await getattr(stub, method)(request, metadata=metadata, timeout=timeout)


async def complete(target: Target, *trace_ids: str, text: str = "ping") -> None:
    """One Complete call per trace id (one untraced call without any), on one channel."""
    async with open_client(target) as client:
        for trace_id in trace_ids or ("",):
            await client.complete(trace_id or None, text=text)


async def rejected(call: Awaitable[Any], code: grpc.StatusCode) -> str:
    """The details of a call that must fail with `code`."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() is code, info.value.details()
    return info.value.details() or ""
