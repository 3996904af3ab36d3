"""Recorded content has the exact shapes LLM-observability tools read.

- `gen_ai.input.messages` / `gen_ai.output.messages` on the `chat` span follow the GenAI
  semantic conventions' JSON schemas (gen-ai-input-messages.json, gen-ai-output-messages.json):
  a message is `{"role", "parts": [{"type": "text", "content"}]}`, and an output message also
  has `finish_reason`, which the output schema requires (Phoenix drops the whole value
  without it). System messages stay in the input messages (they are part of our chat history);
  `gen_ai.system_instructions` is not emitted.
- The RPC's SERVER span carries OpenInference's `openinference.span.kind` ("CHAIN"),
  `input.value` and `output.value` (JSON), which Phoenix and MLflow read for the trace's
  request/response preview.
- All of it only with `telemetry.record_content`, each value capped at `content_max_chars`
  and valid JSON however it is cut.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest
from aigw.v1 import completion_pb2, completion_pb2_grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import SpanKind

from gateway.chat import ChatMessage
from gateway.config import RouteConfig, TelemetryConfig
from gateway.server import Gateway
from gateway.telemetry.genai import TRUNCATED, GenAITelemetry
from gateway.telemetry.metrics import GatewayMetrics
from tests.conftest import GatewayFactory
from tests.openai_stub import OpenAIStub, Reply
from tests.span_capture import capture

CONTENT_ATTRIBUTES = {
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.system_instructions",
    "openinference.span.kind",
    "input.value",
    "input.mime_type",
    "output.value",
    "output.mime_type",
}
KEY_ENV = "AIGW_TEST_CONTENT_KEY"


def _request(*messages: tuple[str, str], **kwargs: Any) -> completion_pb2.CompleteRequest:
    return completion_pb2.CompleteRequest(
        messages=[completion_pb2.Message(role=r, content=c) for r, c in messages], **kwargs
    )


async def _call(
    gw: Gateway, request: completion_pb2.CompleteRequest, stream: bool = False
) -> tuple[Any, ReadableSpan, ReadableSpan]:
    """Make the call; answer (reply, chunks or the error; its SERVER span; its CLIENT span)."""
    spans = capture(gw)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as ch:
        stub = completion_pb2_grpc.CompletionStub(ch)
        try:
            if stream:
                reply: Any = [c async for c in stub.StreamComplete(request, timeout=5)]
            else:
                reply = await stub.Complete(request, timeout=5)
        except grpc.aio.AioRpcError as e:
            reply = e
    # The server ends its span a moment after the client has the status.
    async with asyncio.timeout(5):
        while len(spans.get_finished_spans()) < 2:  # noqa: ASYNC110 - another thread's
            await asyncio.sleep(0.01)
    finished = spans.get_finished_spans()
    [server] = [s for s in finished if s.kind is SpanKind.SERVER]
    [client] = [s for s in finished if s.kind is SpanKind.CLIENT]
    return reply, server, client


def _check_schema(messages: Any, *, output: bool) -> None:
    """The GenAI JSON schemas' requirements for what we emit (text parts only)."""
    assert isinstance(messages, list)
    for message in messages:
        required = {"role", "parts", "finish_reason"} if output else {"role", "parts"}
        assert required <= set(message), f"{message} lacks {required - set(message)}"
        assert isinstance(message["role"], str)
        if output:
            assert isinstance(message["finish_reason"], str)
        for part in message["parts"]:
            assert part["type"] == "text"
            assert isinstance(part["content"], str)


async def test_unary_content_has_the_conventions_and_openinference_shapes(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(telemetry=TelemetryConfig(record_content=True))
    request = _request(("system", "Be terse."), ("user", 'Hello, "gateway" ✓'), model="echo")
    reply, server, client = await _call(gw, request)

    assert client.attributes["gen_ai.input.messages"] == (
        '[{"role": "system", "parts": [{"type": "text", "content": "Be terse."}]}, '
        '{"role": "user", "parts": [{"type": "text", "content": "Hello, \\"gateway\\" ✓"}]}]'
    )
    assert client.attributes["gen_ai.output.messages"] == (
        '[{"role": "assistant", "parts": [{"type": "text", "content": "Hello, \\"gateway\\" ✓"}],'
        ' "finish_reason": "stop"}]'
    )
    _check_schema(json.loads(client.attributes["gen_ai.input.messages"]), output=False)
    _check_schema(json.loads(client.attributes["gen_ai.output.messages"]), output=True)
    assert client.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    # The system message is chat history here, so it is in the input messages, not apart.
    assert "gen_ai.system_instructions" not in client.attributes
    # OpenInference on the chat span is not needed: Phoenix maps gen_ai.* to an LLM span.
    assert "openinference.span.kind" not in client.attributes

    assert server.attributes["openinference.span.kind"] == "CHAIN"
    assert server.attributes["input.mime_type"] == "application/json"
    assert server.attributes["input.value"] == (
        '{"model": "echo", "messages": [{"role": "system", "content": "Be terse."}, '
        '{"role": "user", "content": "Hello, \\"gateway\\" ✓"}]}'
    )
    assert server.attributes["output.mime_type"] == "application/json"
    assert json.loads(server.attributes["output.value"]) == {
        "id": reply.id,
        "model": "echo-1",
        "provider": "echo",
        "content": 'Hello, "gateway" ✓',
        "finish_reason": "stop",
        "usage": {"input_tokens": 7, "output_tokens": 3},
    }
    assert list(json.loads(server.attributes["output.value"])) == [
        "id",
        "model",
        "provider",
        "content",
        "finish_reason",
        "usage",
    ]
    assert reply.usage.input_tokens == 7


async def test_stream_content_is_the_whole_answer_with_its_finish_reason(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(telemetry=TelemetryConfig(record_content=True))
    request = _request(("user", "one two three"), model="echo", max_tokens=2)
    chunks, server, client = await _call(gw, request, stream=True)
    assert [c.delta for c in chunks[:-1]] == ["one", " two"]
    assert client.attributes["gen_ai.output.messages"] == (
        '[{"role": "assistant", "parts": [{"type": "text", "content": "one two"}],'
        ' "finish_reason": "length"}]'
    )
    assert json.loads(server.attributes["output.value"]) == {
        "id": chunks[-1].id,
        "model": "echo-1",
        "provider": "echo",
        "content": "one two",
        "finish_reason": "length",
        "usage": {"input_tokens": 4, "output_tokens": 2},
    }
    assert json.loads(server.attributes["input.value"]) == {
        "model": "echo",
        "messages": [{"role": "user", "content": "one two three"}],
    }


async def test_the_upstreams_finish_reason_is_on_the_output_message(
    gateway_factory: GatewayFactory, openai_stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test-content-0123456789")
    openai_stub.by_model["gpt-test"] = Reply(content="Filtered.", finish_reason="content_filter")
    route = RouteConfig(
        name="gpt",
        provider="openai",
        model="gpt-test",
        base_url=openai_stub.base_url,
        api_key_env=KEY_ENV,
        timeout_seconds=5,
    )
    gw = await gateway_factory(
        routes={"gpt": route}, telemetry=TelemetryConfig(record_content=True)
    )
    for stream in (False, True):
        _, server, client = await _call(gw, _request(("user", "hi"), model="gpt"), stream=stream)
        [message] = json.loads(client.attributes["gen_ai.output.messages"])
        assert message == {
            "role": "assistant",
            "parts": [{"type": "text", "content": "Filtered."}],
            "finish_reason": "content_filter",
        }
        assert json.loads(server.attributes["output.value"])["finish_reason"] == "content_filter"


async def test_a_failed_call_has_its_input_and_no_output(
    gateway_factory: GatewayFactory, openai_stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.openai_stub import Fault

    monkeypatch.setenv(KEY_ENV, "sk-test-content-0123456789")
    openai_stub.by_model["gpt-test"] = Fault(status=500)
    route = RouteConfig(
        name="gpt",
        provider="openai",
        model="gpt-test",
        base_url=openai_stub.base_url,
        api_key_env=KEY_ENV,
        timeout_seconds=5,
    )
    gw = await gateway_factory(
        routes={"gpt": route}, telemetry=TelemetryConfig(record_content=True)
    )
    error, server, client = await _call(gw, _request(("user", "hi"), model="gpt"))
    assert isinstance(error, grpc.aio.AioRpcError)
    assert json.loads(client.attributes["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "hi"}]}
    ]
    assert "gen_ai.output.messages" not in client.attributes
    assert server.attributes["openinference.span.kind"] == "CHAIN"
    assert json.loads(server.attributes["input.value"]) == {
        "model": "gpt",
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert "output.value" not in server.attributes


async def test_nothing_is_recorded_without_the_opt_in(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    for stream in (False, True):
        _, server, client = await _call(gw, _request(("user", "secret"), model="echo"), stream)
        assert not CONTENT_ATTRIBUTES & set(server.attributes)
        assert not CONTENT_ATTRIBUTES & set(client.attributes)
        assert "secret" not in repr(dict(server.attributes)) + repr(dict(client.attributes))


# --- caps -------------------------------------------------------------------------------------


def _genai(cap: int) -> GenAITelemetry:
    return GenAITelemetry(
        TracerProvider().get_tracer("t"),
        GatewayMetrics(MeterProvider().get_meter("t")),
        TelemetryConfig(record_content=True, content_max_chars=cap),
    )


MESSAGES = (
    ChatMessage("system", "Answer in French."),
    ChatMessage("user", 'Say "hello" ✓\nthen stop.'),
    ChatMessage("assistant", "Bonjour."),
    ChatMessage("user", "Again, longer this time, please."),
)


def test_under_the_cap_nothing_is_cut() -> None:
    genai = _genai(4096)
    value = genai.input_messages(MESSAGES)
    assert TRUNCATED not in value
    assert [(m["role"], m["parts"][0]["content"]) for m in json.loads(value)] == [
        (m.role, m.content) for m in MESSAGES
    ]


@pytest.mark.parametrize("cap", [0, 10, 60, 75, 100, 120, 150, 200, 230, 260, 300])
def test_a_capped_value_is_valid_json_cut_in_order(cap: int) -> None:
    assert len(_genai(4096).input_messages(MESSAGES)) > 300
    value = _genai(cap).input_messages(MESSAGES)
    messages = json.loads(value)
    _check_schema(messages, output=False)
    # Within the cap, unless not even the first message emptied of its text fits.
    emptied = json.dumps(
        [{"role": "system", "parts": [{"type": "text", "content": TRUNCATED}]}],
        ensure_ascii=False,
    )
    if cap >= len(emptied):
        assert len(value) <= cap
    else:
        assert value == emptied
    # Texts are kept in order; only the last kept one is cut (and marked), the rest are whole.
    texts = [m["parts"][0]["content"] for m in messages]
    assert texts[-1].endswith(TRUNCATED)
    for kept, original in zip(texts[:-1], MESSAGES, strict=False):
        assert kept == original.content
    assert MESSAGES[len(texts) - 1].content.startswith(texts[-1].removesuffix(TRUNCATED))
    assert [m["role"] for m in messages] == [m.role for m in MESSAGES[: len(texts)]]


def test_the_cap_keeps_the_most_text_that_fits() -> None:
    expected = (
        '[{"role": "system", "parts": [{"type": "text", "content": "Answer in French."}]}, '
        '{"role": "user", "parts": [{"type": "text", "content": "…[truncated]"}]}]'
    )
    assert _genai(len(expected)).input_messages(MESSAGES) == expected
    # One character short: the system text gives up its last character.
    assert json.loads(_genai(len(expected) - 1).input_messages(MESSAGES)) == [
        {"role": "system", "parts": [{"type": "text", "content": "Answer in French" + TRUNCATED}]}
    ]
    # One more character of budget is one more character of text.
    [_, user] = json.loads(_genai(len(expected) + 1).input_messages(MESSAGES))
    assert user["parts"][0]["content"] == "S" + TRUNCATED


def test_output_and_openinference_values_are_capped_as_json_too() -> None:
    genai = _genai(200)
    long = "word " * 100
    output = genai.output_messages(long, "stop")
    assert len(output) <= 200
    [message] = json.loads(output)
    assert message["finish_reason"] == "stop"
    assert message["parts"][0]["content"].endswith(TRUNCATED)
    request = genai.request_value("echo", (ChatMessage("user", long),))
    assert len(request) <= 200
    assert json.loads(request)["messages"][0]["content"].endswith(TRUNCATED)
    response = genai.response_value(
        response_id="r-1",
        model="m",
        provider="echo",
        content=long,
        finish_reason="length",
        input_tokens=1,
        output_tokens=100,
    )
    assert len(response) <= 200
    answer = json.loads(response)
    assert answer["content"].endswith(TRUNCATED)
    assert answer["usage"] == {"input_tokens": 1, "output_tokens": 100}
