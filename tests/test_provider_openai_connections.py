"""OpenAIProvider against the OpenAI stub over real HTTP: timeouts, refused and dropped
connections, broken answers, the connection lifecycle, and the stub's own scripting."""

from __future__ import annotations

import asyncio
import socket
import time

import grpc
import pytest

from gateway.errors import (
    UpstreamHTTPError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gateway.providers.openai import OpenAIProvider
from tests.openai_provider_support import (  # noqa: F401 - fixtures
    ENV,
    KEY,
    MODES,
    _environment,
    call,
    chat,
    chunk,
    collect,
    make_route,
    provider_fixture,
    read_into,
    refused_url_fixture,
)
from tests.openai_stub import Fault, OpenAIStub, Reply, sse

# --- timeouts and connections ------------------------------------------------------------------


@MODES
async def test_slow_upstream_times_out(
    provider: OpenAIProvider, openai_stub: OpenAIStub, mode: str
) -> None:
    openai_stub.next_responses.append(Reply(delay=30))
    started = time.monotonic()

    with pytest.raises(UpstreamTimeout) as caught:
        await call(provider, mode, budget=0.3)

    assert time.monotonic() - started < 3
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "0.3 s" in caught.value.message
    assert await openai_stub.requests[-1].wait_client_gone()  # the request was abandoned


async def test_timeout_bounds_the_whole_stream(
    provider: OpenAIProvider, openai_stub: OpenAIStub
) -> None:
    # Every chunk arrives well within the budget; all of them together do not.
    openai_stub.next_responses.append(Reply(content="word " * 50, token_delay=0.05))
    received: list[str] = []
    started = time.monotonic()

    with pytest.raises(UpstreamTimeout):
        await read_into(received, provider, 0.5)

    assert 0 < len(received) < 50
    assert time.monotonic() - started < 3


async def test_consumer_time_counts_against_the_stream_budget(
    provider: OpenAIProvider,
) -> None:
    stream = provider.stream(chat(), timeout=0.3)
    await anext(stream)
    await asyncio.sleep(0.4)  # the rest is already buffered; the budget is still spent
    with pytest.raises(UpstreamTimeout):
        await anext(stream)


@MODES
async def test_refused_connection_is_unreachable(refused_url: str, mode: str) -> None:
    p = OpenAIProvider(make_route(refused_url))
    try:
        with pytest.raises(UpstreamUnreachable) as caught:
            await call(p, mode)
    finally:
        await p.aclose()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.error_type == "connection_error"
    assert f"127.0.0.1:{p.server_port}" in caught.value.message


# --- broken answers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "not json at all",
        "[1, 2]",
        '{"choices": []}',
        '{"choices": [{"message": {"content": 42}}]}',
        '{"choices": [{"finish_reason": "stop"}]}',
    ],
)
async def test_malformed_unary_answer(
    provider: OpenAIProvider, openai_stub: OpenAIStub, body: str
) -> None:
    openai_stub.next_responses.append(Reply(body=body))
    with pytest.raises(UpstreamProtocolError) as caught:
        await provider.complete(chat(), timeout=5)
    assert caught.value.error_type == "invalid_response"


@pytest.mark.parametrize(
    "events",
    [
        pytest.param([sse(chunk("Hi")), "data: {oops\n\n"], id="invalid-json"),
        pytest.param([sse(chunk("Hi")), sse([1, 2])], id="not-an-object"),
        pytest.param([sse(chunk("Hi")), sse({"choices": [{"delta": "Hi"}]})], id="bad-delta"),
        pytest.param([sse(chunk("Hi")), 'data: {"choices": "x"}\n\n'], id="bad-choices"),
    ],
)
async def test_malformed_stream_event(
    provider: OpenAIProvider, openai_stub: OpenAIStub, events: list[str]
) -> None:
    openai_stub.next_responses.append(Reply(events=events))
    received: list[str] = []
    with pytest.raises(UpstreamProtocolError):
        await read_into(received, provider)
    assert received == ["Hi"]


@pytest.mark.parametrize("abort", [True, False], ids=["connection-dropped", "body-ended"])
async def test_stream_cut_mid_way(
    provider: OpenAIProvider, openai_stub: OpenAIStub, abort: bool
) -> None:
    openai_stub.next_responses.append(Reply(cut_after=2, abort=abort))
    received: list[str] = []

    with pytest.raises(UpstreamProtocolError) as caught:
        await read_into(received, provider)

    assert received == ["Echo:", " hello"]
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


# --- connection lifecycle ----------------------------------------------------------------------


async def test_stopping_early_closes_the_response(
    provider: OpenAIProvider, openai_stub: OpenAIStub
) -> None:
    openai_stub.next_responses.append(Reply(content="word " * 100, token_delay=0.02))
    stream = provider.stream(chat(), timeout=10)
    assert (await anext(stream)).delta == "word"

    await stream.aclose()  # what a servicer does when its client cancels

    sent = openai_stub.requests[-1]
    assert await sent.wait_client_gone()
    assert not sent.completed.is_set()


async def test_cancelling_the_consumer_closes_the_response(
    provider: OpenAIProvider, openai_stub: OpenAIStub
) -> None:
    openai_stub.next_responses.append(Reply(content="word " * 100, token_delay=0.02))
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in provider.stream(chat(), timeout=10):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await openai_stub.requests[-1].wait_client_gone()


async def test_connections_are_reused(provider: OpenAIProvider, openai_stub: OpenAIStub) -> None:
    await provider.complete(chat(), timeout=5)
    await provider.complete(chat(), timeout=5)
    # A consumer that stops at the final chunk, as the servicer does.
    async for c in provider.stream(chat(), timeout=5):
        if c.is_final:
            break
    await collect(provider)

    assert [r.connection for r in openai_stub.requests] == [1, 1, 1, 1]


# --- the stub's own scripting ------------------------------------------------------------------


async def test_stub_by_model_and_next_responses(
    provider: OpenAIProvider, openai_stub: OpenAIStub
) -> None:
    openai_stub.by_model["stub-model"] = Fault(status=503, message="overloaded")
    openai_stub.next_responses.append(Reply(content="scripted once"))

    first = await provider.complete(chat(), timeout=5)
    with pytest.raises(UpstreamHTTPError) as caught:
        await provider.complete(chat(), timeout=5)

    assert first.content == "scripted once"
    assert (caught.value.status, caught.value.upstream_message) == (503, "overloaded")


def test_stub_stops_cleanly_with_a_client_mid_response() -> None:
    stub = OpenAIStub().start()
    stub.next_responses.append(Reply(delay=30))
    with socket.create_connection(("127.0.0.1", stub.port), timeout=5) as client:
        client.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}"
        )
        deadline = time.monotonic() + 5
        while not stub.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        stub.stop()
        assert time.monotonic() - started < 2
        assert client.recv(1024) == b""  # the stub closed its side
    assert stub.requests
    assert not stub.errors
