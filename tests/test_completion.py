"""Completion over real gRPC with the built-in echo provider: answers, streams, bad input."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from aigw.v1 import completion_pb2, completion_pb2_grpc

from gateway.config import RouteConfig
from tests.conftest import GatewayFactory, chat


async def test_unary_echo_answers_with_the_prompt_and_counts_tokens(
    completion: completion_pb2_grpc.CompletionStub,
) -> None:
    request = completion_pb2.CompleteRequest(
        model="echo",
        messages=[
            completion_pb2.Message(role="system", content="be brief"),
            completion_pb2.Message(role="user", content="the quick brown fox"),
        ],
    )
    reply = await completion.Complete(request, timeout=5)
    assert reply.content == "the quick brown fox"
    assert reply.model == "echo-1"
    assert reply.provider == "echo"
    assert reply.finish_reason == "stop"
    assert reply.id.startswith("echo-")
    # 2 + 4 words, plus one per message for its role.
    assert reply.usage.input_tokens == 8
    assert reply.usage.output_tokens == 4


async def test_max_tokens_cuts_the_answer_and_stop_ends_it(
    completion: completion_pb2_grpc.CompletionStub,
) -> None:
    cut = await completion.Complete(chat("one two three four", max_tokens=2), timeout=5)
    assert (cut.content, cut.finish_reason, cut.usage.output_tokens) == ("one two", "length", 2)
    stopped = await completion.Complete(chat("one two three four", stop=[" three"]), timeout=5)
    assert (stopped.content, stopped.finish_reason) == ("one two", "stop")


async def test_stream_sends_deltas_then_one_final_chunk(
    completion: completion_pb2_grpc.CompletionStub,
) -> None:
    chunks = [c async for c in completion.StreamComplete(chat("a b c"), timeout=5)]
    deltas, final = chunks[:-1], chunks[-1]
    assert "".join(c.delta for c in deltas) == "a b c"
    assert all(not c.finish_reason and not c.HasField("usage") for c in deltas)
    assert final.delta == ""
    assert final.finish_reason == "stop"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (4, 3)
    assert len({c.id for c in chunks}) == 1
    assert {c.provider for c in chunks} == {"echo"}


@pytest.mark.parametrize(
    ("request_", "code", "field"),
    [
        (completion_pb2.CompleteRequest(model="echo"), "INVALID_ARGUMENT", "messages"),
        (chat(model=""), "INVALID_ARGUMENT", "model"),
        (
            completion_pb2.CompleteRequest(
                model="echo", messages=[completion_pb2.Message(role="wizard", content="hi")]
            ),
            "INVALID_ARGUMENT",
            "messages[0].role",
        ),
        (chat(max_tokens=-1), "INVALID_ARGUMENT", "max_tokens"),
        (chat(max_tokens=0), "INVALID_ARGUMENT", "max_tokens"),
        (chat(temperature=2.5), "INVALID_ARGUMENT", "temperature"),
        (chat(temperature=float("nan")), "INVALID_ARGUMENT", "temperature"),
        (chat(top_p=0), "INVALID_ARGUMENT", "top_p"),
        (chat(stop=["a", "b", "c", "d", "e"]), "INVALID_ARGUMENT", "stop"),
        (chat(stop=[""]), "INVALID_ARGUMENT", "stop[0]"),
        (chat(metadata={"bad key": "v"}), "INVALID_ARGUMENT", "metadata"),
        (chat(model="gpt-9"), "NOT_FOUND", "model"),
    ],
)
async def test_bad_requests_name_the_field(
    completion: completion_pb2_grpc.CompletionStub,
    request_: completion_pb2.CompleteRequest,
    code: str,
    field: str,
) -> None:
    async def unary() -> None:
        await completion.Complete(request_, timeout=5)

    async def stream() -> None:
        _ = [c async for c in completion.StreamComplete(request_, timeout=5)]

    for call in (unary, stream):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call()
        assert info.value.code().name == code
        assert info.value.details().startswith(field + ":") or info.value.details().startswith(
            field + "["
        ), info.value.details()


async def test_unknown_model_lists_the_known_routes(
    completion: completion_pb2_grpc.CompletionStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await completion.Complete(chat(model="gpt-9"), timeout=5)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    assert "'gpt-9'" in info.value.details()
    assert "known routes: echo" in info.value.details()


async def test_client_deadline_bounds_a_slow_upstream(gateway_factory: GatewayFactory) -> None:
    slow = RouteConfig(name="slow", provider="echo", model="echo-1", latency_ms=5_000)
    gw = await gateway_factory(routes={"slow": slow})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as ch:
        stub = completion_pb2_grpc.CompletionStub(ch)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Complete(chat(model="slow"), timeout=0.3)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        # Generous bound: proves the 5 s upstream was not awaited.
        assert loop.time() - started < 3


async def test_oversized_request_is_refused(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(max_message_bytes=64 * 1024)
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{gw.port}", options=[("grpc.max_send_message_length", 1 << 22)]
    ) as ch:
        stub = completion_pb2_grpc.CompletionStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Complete(chat("x" * 100_000), timeout=5)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        ok = await stub.Complete(chat("still serving"), timeout=5)
        assert ok.content == "still serving"
