"""What the OpenAIProvider tests share: the route, the request, the key they hunt, the raw
chunks they script the stub with, and their fixtures (each test module imports them; the stub
itself is the suite-wide `openai_stub` fixture)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from gateway.chat import ChatChunk, ChatMessage, ChatRequest, ChatResult
from gateway.config import RouteConfig
from gateway.providers.openai import OpenAIProvider
from tests.openai_stub import OpenAIStub

ENV = "AIGW_TEST_OPENAI_KEY"
KEY = "sk-test-4f9d2c7b1e8a6d3f"
PROMPT = "hello there world"
# The stub counts words: "Be brief." plus PROMPT in, "Echo: hello there world" out.
INPUT_TOKENS = 5
OUTPUT_TOKENS = 4
MODES = pytest.mark.parametrize("mode", ["complete", "stream"])


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, KEY)
    # A developer's proxy settings would send loopback traffic elsewhere.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture(name="provider")
async def provider_fixture(openai_stub: OpenAIStub) -> AsyncIterator[OpenAIProvider]:
    p = OpenAIProvider(make_route(openai_stub.base_url))
    yield p
    await p.aclose()


@pytest.fixture(name="refused_url")
def refused_url_fixture() -> Iterator[str]:
    # Bound but not listening: connections are refused and no one else can take the port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def make_route(base_url: str, *, api_key_env: str = ENV) -> RouteConfig:
    return RouteConfig(
        name="stubbed",
        provider="openai",
        model="stub-model",
        base_url=base_url,
        api_key_env=api_key_env,
    )


def chat(text: str = PROMPT, **params: object) -> ChatRequest:
    return ChatRequest(
        model="stub-model",
        messages=(ChatMessage("system", "Be brief."), ChatMessage("user", text)),
        **params,  # type: ignore[arg-type]
    )


async def collect(provider: OpenAIProvider, budget: float = 5.0) -> list[ChatChunk]:
    return [chunk async for chunk in provider.stream(chat(), timeout=budget)]


async def read_into(received: list[str], provider: OpenAIProvider, budget: float = 5.0) -> None:
    """Stream, keeping the deltas that arrived before the stream failed."""
    async for c in provider.stream(chat(), timeout=budget):
        received.append(c.delta)


async def call(
    provider: OpenAIProvider, mode: str, budget: float = 5.0
) -> ChatResult | list[ChatChunk]:
    """The same request, unary or streamed, for behaviour both must share."""
    if mode == "complete":
        return await provider.complete(chat(), timeout=budget)
    return await collect(provider, budget)


def chunk(text: str = "", finish: str | None = None) -> dict[str, object]:
    return {
        "id": "chatcmpl-raw",
        "model": "raw-model",
        "choices": [
            {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}
        ],
    }


def usage_chunk(prompt: int, completion: int) -> dict[str, object]:
    return {
        "id": "chatcmpl-raw",
        "model": "raw-model",
        "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": 0},
    }


def assert_no_key(error: BaseException) -> None:
    for text in (str(error), repr(error), *map(str, error.args), *map(str, vars(error).values())):
        assert KEY not in text
        assert KEY[:10] not in text  # not even a fragment left by truncation
