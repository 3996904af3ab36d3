"""Model providers: one module each, all behind the `Provider` protocol.

A provider turns a validated `ChatRequest` into a `ChatResult` or a stream of `ChatChunk`s and
raises only `gateway.errors.UpstreamError` subclasses. Telemetry lives outside providers: the
servicer wraps every call in the GenAI client span, so a new provider gets spans and metrics for
free. Outgoing HTTP requests carry the W3C `traceparent` of that span.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from gateway.chat import ChatChunk, ChatRequest, ChatResult
from gateway.config import RouteConfig

__all__ = ["Provider", "build_provider"]


class Provider(Protocol):
    # `gen_ai.provider.name` and the `provider` field of responses.
    name: str
    # Where the upstream lives, for `server.address`/`server.port` (None for built-ins).
    server_address: str | None
    server_port: int | None

    async def complete(self, request: ChatRequest, *, timeout: float) -> ChatResult: ...

    def stream(self, request: ChatRequest, *, timeout: float) -> AsyncIterator[ChatChunk]: ...

    async def aclose(self) -> None: ...


def build_provider(route: RouteConfig) -> Provider:
    if route.provider == "echo":
        from gateway.providers.echo import EchoProvider

        return EchoProvider(route)
    if route.provider == "openai":
        from gateway.providers.openai import OpenAIProvider

        return OpenAIProvider(route)
    raise ValueError(f"unknown provider {route.provider!r}")
