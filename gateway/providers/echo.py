"""The built-in `echo` provider: no network, a deterministic answer, honest token counts.

It answers with the last user message, word for word, so a caller can predict every reply and
every count. Tokens are whitespace-led words (`count_tokens`); input usage is the tokens of every
message plus one per message for its role. `max_tokens` cuts the reply (finish_reason "length"),
a stop sequence ends it ("stop"). `latency_ms` delays the first token and `token_delay_ms` each
following one, so streaming, time to first token and benchmarks behave like a real model.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator

from gateway.chat import ChatChunk, ChatRequest, ChatResult
from gateway.config import RouteConfig
from gateway.errors import UpstreamTimeout

__all__ = ["EchoProvider", "count_tokens", "split_tokens"]

_TOKEN = re.compile(r"\s*\S+|\s+$")


def split_tokens(text: str) -> list[str]:
    """Pieces that join back to `text` exactly: each word with the whitespace before it."""
    return _TOKEN.findall(text)


def count_tokens(text: str) -> int:
    return len(split_tokens(text))


class EchoProvider:
    name = "echo"
    server_address: str | None = None
    server_port: int | None = None

    def __init__(self, route: RouteConfig) -> None:
        self._route = route.name
        self._model = route.model
        self._latency = route.latency_ms / 1000
        self._token_delay = route.token_delay_ms / 1000

    def _answer(self, request: ChatRequest) -> tuple[list[str], str, int]:
        prompt = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        text, finish = prompt, "stop"
        for stop in request.stop:
            cut = text.find(stop)
            if cut >= 0:
                text = text[:cut]
        tokens = split_tokens(text)
        if request.max_tokens is not None and len(tokens) > request.max_tokens:
            tokens, finish = tokens[: request.max_tokens], "length"
        input_tokens = sum(count_tokens(m.content) + 1 for m in request.messages)
        return tokens, finish, input_tokens

    async def complete(self, request: ChatRequest, *, timeout: float) -> ChatResult:
        tokens, finish, input_tokens = self._answer(request)
        delay = self._latency + self._token_delay * max(len(tokens) - 1, 0)
        if delay > timeout:
            await asyncio.sleep(timeout)
            raise UpstreamTimeout(self._route, f"no answer within {timeout:.3g}s")
        if delay:
            await asyncio.sleep(delay)
        return ChatResult(
            id=f"echo-{uuid.uuid4().hex}",
            model=self._model,
            content="".join(tokens),
            finish_reason=finish,
            input_tokens=input_tokens,
            output_tokens=len(tokens),
        )

    async def stream(self, request: ChatRequest, *, timeout: float) -> AsyncIterator[ChatChunk]:
        tokens, finish, input_tokens = self._answer(request)
        completion_id = f"echo-{uuid.uuid4().hex}"
        deadline = asyncio.get_running_loop().time() + timeout
        for i, token in enumerate(tokens):
            wait = self._latency if i == 0 else self._token_delay
            if wait:
                if asyncio.get_running_loop().time() + wait > deadline:
                    await asyncio.sleep(max(deadline - asyncio.get_running_loop().time(), 0))
                    raise UpstreamTimeout(self._route, f"stream not done within {timeout:.3g}s")
                await asyncio.sleep(wait)
            yield ChatChunk(id=completion_id, model=self._model, delta=token)
        yield ChatChunk(
            id=completion_id,
            model=self._model,
            finish_reason=finish,
            input_tokens=input_tokens,
            output_tokens=len(tokens),
        )

    async def aclose(self) -> None:
        return None
