"""An `openai` route end to end: gRPC in, OpenAI-compatible HTTP out to a loopback stub."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from aigw.v1 import completion_pb2, completion_pb2_grpc
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway.config import RouteConfig
from gateway.server import Gateway
from tests.conftest import GatewayFactory, chat
from tests.openai_stub import Fault, OpenAIStub, Reply, reply_text

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
    spans = InMemorySpanExporter()
    assert gw.telemetry is not None
    gw.telemetry.tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
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


async def test_client_deadline_bounds_a_slow_upstream(gw: Gateway, openai_stub: OpenAIStub) -> None:
    openai_stub.next_responses.append(Reply(delay=5))
    ch, stub = _stub(gw)
    loop = asyncio.get_running_loop()
    async with ch:
        started = loop.time()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Complete(chat(model="gpt"), timeout=0.4)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert loop.time() - started < 3
        # The route's own timeout (0.3 s) applies when the client gives no deadline.
        openai_stub.next_responses.append(Reply(delay=5))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Complete(chat(model="gpt-fast-timeout"))
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert "route 'gpt-fast-timeout'" in info.value.details()


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
