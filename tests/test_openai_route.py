"""An `openai` route end to end: gRPC in, OpenAI-compatible HTTP out to a loopback stub."""

from __future__ import annotations

import asyncio
import collections
import time

import grpc
import pytest
from aigw.v1 import completion_pb2, completion_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from gateway.config import RouteConfig
from gateway.server import Gateway
from tests.conftest import GatewayFactory, chat
from tests.openai_stub import Fault, OpenAIStub, Reply, reply_text
from tests.span_capture import CapturedSpans, capture

KEY = "sk-test-aigw-0123456789abcdef"
KEY_ENV = "AIGW_TEST_OPENAI_KEY"


@pytest.fixture
async def gw(
    gateway_factory: GatewayFactory, openai_stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch
) -> Gateway:
    monkeypatch.setenv(KEY_ENV, KEY)
    routes = {
        "gpt": RouteConfig(
            name="gpt",
            provider="openai",
            model="gpt-4o-mini",
            base_url=openai_stub.base_url,
            api_key_env=KEY_ENV,
            timeout_seconds=5,
        ),
        "gpt-fast-timeout": RouteConfig(
            name="gpt-fast-timeout",
            provider="openai",
            model="slow-model",
            base_url=openai_stub.base_url,
            api_key_env=KEY_ENV,
            timeout_seconds=0.3,
        ),
    }
    return await gateway_factory(routes=routes)


def _stub(gw: Gateway) -> tuple[grpc.aio.Channel, completion_pb2_grpc.CompletionStub]:
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}")
    return ch, completion_pb2_grpc.CompletionStub(ch)


async def test_unary_sends_the_right_request_and_relays_the_answer(
    gw: Gateway, openai_stub: OpenAIStub
) -> None:
    spans = capture(gw)
    request = completion_pb2.CompleteRequest(
        model="gpt",
        messages=[
            completion_pb2.Message(role="system", content="terse"),
            completion_pb2.Message(role="user", content="hello upstream"),
        ],
        max_tokens=64,
        temperature=0.2,
        stop=["\n\n"],
    )
    ch, stub = _stub(gw)
    async with ch:
        reply = await stub.Complete(request, timeout=5)
    assert reply.content == reply_text("hello upstream")
    assert reply.provider == "openai"
    assert reply.model == "gpt-4o-mini"
    assert reply.usage.input_tokens > 0
    assert reply.usage.output_tokens > 0
    [sent] = openai_stub.requests
    assert sent.path.endswith("/chat/completions")
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body["model"] == "gpt-4o-mini"
    assert sent.body["messages"] == [
        {"role": "system", "content": "terse"},
        {"role": "user", "content": "hello upstream"},
    ]
    assert sent.body["max_tokens"] == 64
    assert sent.body["temperature"] == 0.2
    assert sent.body["stop"] == ["\n\n"]
    assert "top_p" not in sent.body
    assert not sent.body.get("stream")
    # The upstream request carries the CLIENT span's context, nothing more.
    [client] = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    trace_id = format(client.context.trace_id, "032x")
    span_id = format(client.context.span_id, "016x")
    version, sent_trace, sent_span, flags = sent.headers["traceparent"].split("-")
    assert (version, sent_trace, sent_span) == ("00", trace_id, span_id)
    assert int(flags, 16) & 1  # sampled
    assert "baggage" not in sent.headers
    assert client.attributes["server.address"] == "127.0.0.1"
    assert client.attributes["gen_ai.provider.name"] == "openai"


async def test_stream_relays_deltas_and_usage(gw: Gateway, openai_stub: OpenAIStub) -> None:
    ch, stub = _stub(gw)
    async with ch:
        chunks = [
            c async for c in stub.StreamComplete(chat("one two three", model="gpt"), timeout=5)
        ]
    assert "".join(c.delta for c in chunks) == reply_text("one two three")
    final = chunks[-1]
    assert final.finish_reason == "stop"
    assert final.usage.output_tokens > 0
    [sent] = openai_stub.requests
    assert sent.body["stream"] is True
    assert sent.body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, grpc.StatusCode.INVALID_ARGUMENT),
        (401, grpc.StatusCode.FAILED_PRECONDITION),
        (404, grpc.StatusCode.NOT_FOUND),
        (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (500, grpc.StatusCode.UNAVAILABLE),
        (503, grpc.StatusCode.UNAVAILABLE),
    ],
)
async def test_upstream_errors_map_to_grpc_codes_with_the_upstream_message(
    gw: Gateway, openai_stub: OpenAIStub, status: int, code: grpc.StatusCode
) -> None:
    ch, stub = _stub(gw)
    async with ch:

        async def unary() -> None:
            await stub.Complete(chat(model="gpt"), timeout=5)

        async def stream() -> None:
            _ = [c async for c in stub.StreamComplete(chat(model="gpt"), timeout=5)]

        for call in (unary, stream):
            openai_stub.next_responses.append(
                Fault(status=status, message=f"upstream says {status}")
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call()
            assert info.value.code() is code
            assert f"upstream says {status}" in info.value.details()
            assert f"HTTP {status}" in info.value.details()
            assert KEY not in info.value.details()


async def _ended(spans: CapturedSpans, n: int) -> tuple[ReadableSpan, ...]:
    """The spans once `n` have ended (the server span ends a moment after the client's error)."""
    try:
        async with asyncio.timeout(5):
            while len(spans.get_finished_spans()) < n:  # noqa: ASYNC110 - another thread's
                await asyncio.sleep(0.01)
    except TimeoutError:
        seen = collections.Counter(s.kind.name for s in spans.get_finished_spans())
        raise AssertionError(f"{n} spans expected to end within 5 s, ended: {dict(seen)}") from None
    return spans.get_finished_spans()


async def _call_with_deadline(
    stub: completion_pb2_grpc.CompletionStub, deadline: float, *, streamed: bool, text: str = "hi"
) -> grpc.StatusCode:
    try:
        if streamed:
            _ = [c async for c in stub.StreamComplete(chat(text, model="gpt"), timeout=deadline)]
        else:
            await stub.Complete(chat(text, model="gpt"), timeout=deadline)
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def _slow_reply(streamed: bool) -> Reply:
    # Unary: no status line for 5 s. Stream: the status line, then a word every 5 s.
    return Reply(token_delay=5) if streamed else Reply(delay=5)


@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "stream"])
async def test_a_client_deadline_shorter_than_the_route_timeout_ends_the_upstream_call_then(
    gw: Gateway, openai_stub: OpenAIStub, streamed: bool
) -> None:
    """Route "gpt" allows 5 s; the client allows 0.5 s. Seen from the server side: the upstream
    stub sees the gateway hang up at the client's deadline, and both spans end then, not when
    the route's timeout or the upstream's 5 s answer would have ended them."""
    deadline = 0.5
    spans = capture(gw)
    openai_stub.next_responses.append(_slow_reply(streamed))
    ch, stub = _stub(gw)
    async with ch:
        # The stub runs in this process: its time.monotonic() is ours.
        started, started_ns = time.monotonic(), time.time_ns()
        code = await _call_with_deadline(stub, deadline, streamed=streamed)
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED
    [sent] = openai_stub.requests
    # The upstream side: the gateway closed the connection at the deadline, not before.
    assert await sent.wait_client_gone(5), "the gateway never hung up on the upstream"
    assert not sent.completed.is_set()
    assert sent.client_gone_at is not None
    hung_up = sent.client_gone_at - started
    assert deadline * 0.8 < hung_up < deadline + 0.3, hung_up
    # The spans end then too.
    ended = await _ended(spans, 2)
    [server] = [s for s in ended if s.kind is SpanKind.SERVER]
    [client] = [s for s in ended if s.kind is SpanKind.CLIENT]
    for span in (server, client):
        assert span.end_time is not None
        ended_at = (span.end_time - started_ns) / 1e9
        assert deadline * 0.8 < ended_at < deadline + 0.3, (span.name, ended_at)
    assert server.attributes["rpc.response.status_code"] in ("DEADLINE_EXCEEDED", "CANCELLED")
    assert client.status.status_code is StatusCode.ERROR
    assert client.parent is not None
    assert client.parent.span_id == server.context.span_id


@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "stream"])
async def test_a_passed_client_deadline_is_recorded_as_deadline_exceeded(
    gw: Gateway, openai_stub: OpenAIStub, streamed: bool
) -> None:
    # Each call races the two timers: alone, gRPC's cancel wins about half the time; 20 at
    # once, it won some or all of them in every round seen here. Three rounds of 20, so the
    # claim (all of them right) cannot hold by chance.
    calls, rounds = 20, 3
    spans = capture(gw)
    openai_stub.by_model["gpt-4o-mini"] = _slow_reply(streamed)
    ch, stub = _stub(gw)
    async with ch:
        for _ in range(rounds):
            codes = await asyncio.gather(
                *(_call_with_deadline(stub, 0.5, streamed=streamed) for _ in range(calls))
            )
            assert set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}
    calls *= rounds
    ended = await _ended(spans, 2 * calls)
    server = collections.Counter(
        s.attributes["rpc.response.status_code"] for s in ended if s.kind is SpanKind.SERVER
    )
    client = collections.Counter(
        s.attributes.get("error.type") for s in ended if s.kind is SpanKind.CLIENT
    )
    assert server == {"DEADLINE_EXCEEDED": calls}, server
    assert client == {"timeout": calls}, client


async def test_without_a_client_deadline_the_route_timeout_ends_the_upstream_call(
    gw: Gateway, openai_stub: OpenAIStub
) -> None:
    openai_stub.next_responses.append(Reply(delay=5))
    ch, stub = _stub(gw)
    async with ch:
        # The route's own timeout (0.3 s) applies when the client gives no deadline.
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Complete(chat(model="gpt-fast-timeout"))
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "route 'gpt-fast-timeout'" in info.value.details()
    [sent] = openai_stub.requests
    assert await sent.wait_client_gone(5)
    assert sent.client_gone_at is not None
    assert sent.client_gone_at - started < 0.3 + 0.3


async def test_a_missing_key_variable_is_a_precondition_naming_the_variable(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV)
    ch, stub = _stub(gw)
    async with ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Complete(chat(model="gpt"), timeout=5)
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert KEY_ENV in info.value.details()


async def test_a_dead_upstream_is_unavailable(gateway_factory: GatewayFactory) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    route = RouteConfig(
        name="dead", provider="openai", model="m", base_url=f"http://127.0.0.1:{port}/v1"
    )
    gw = await gateway_factory(routes={"dead": route})
    ch, stub = _stub(gw)
    async with ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Complete(chat(model="dead"), timeout=5)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
