"""OpenAIProvider against the OpenAI stub over real HTTP: what goes on the wire and what comes
back (unary results, stream deltas, endings, SSE framing)."""

from __future__ import annotations

import json

import pytest
from opentelemetry.sdk.trace import TracerProvider

from gateway.chat import ChatResult
from gateway.providers.openai import OpenAIProvider
from tests.openai_provider_support import (  # noqa: F401 - fixtures
    ENV,
    INPUT_TOKENS,
    KEY,
    MODES,
    OUTPUT_TOKENS,
    PROMPT,
    _environment,
    call,
    chat,
    chunk,
    collect,
    make_route,
    provider_fixture,
    usage_chunk,
)
from tests.openai_stub import OpenAIStub, Reply, reply_text, sse

# --- what goes on the wire ----------------------------------------------------------------------


async def test_unary_request_carries_model_messages_and_nothing_unset(
    provider: OpenAIProvider, openai_stub: OpenAIStub
) -> None:
    await provider.complete(chat(), timeout=5)

    [sent] = openai_stub.requests
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.body == {
        "model": "stub-model",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": PROMPT},
        ],
    }
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["content-type"] == "application/json"


async def test_set_parameters_are_sent_even_when_falsy(
    provider: OpenAIProvider, openai_stub: OpenAIStub
) -> None:
    await provider.complete(
        chat(max_tokens=50, temperature=0.0, top_p=0.5, stop=("\n\n", "END")), timeout=5
    )

    body = openai_stub.requests[-1].body
    assert {k: body[k] for k in ("max_tokens", "temperature", "top_p", "stop")} == {
        "max_tokens": 50,
        "temperature": 0.0,
        "top_p": 0.5,
        "stop": ["\n\n", "END"],
    }
    assert "stream" not in body


async def test_stream_request_asks_for_usage(
    provider: OpenAIProvider, openai_stub: OpenAIStub
) -> None:
    await collect(provider)

    sent = openai_stub.requests[-1]
    assert sent.body["stream"] is True
    assert sent.body["stream_options"] == {"include_usage": True}
    assert set(sent.body) == {"model", "messages", "stream", "stream_options"}
    assert sent.headers["accept"] == "text/event-stream"


async def test_no_authorization_header_without_api_key_env(openai_stub: OpenAIStub) -> None:
    p = OpenAIProvider(make_route(openai_stub.base_url, api_key_env=""))
    try:
        await p.complete(chat(), timeout=5)
    finally:
        await p.aclose()
    assert "authorization" not in openai_stub.requests[-1].headers


async def test_key_is_read_at_call_time_and_trimmed(
    provider: OpenAIProvider, openai_stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, " sk-rotated\n")  # as a mounted secret file often ends
    await provider.complete(chat(), timeout=5)
    assert openai_stub.requests[-1].headers["authorization"] == "Bearer sk-rotated"


async def test_base_url_without_v1(openai_stub: OpenAIStub) -> None:
    p = OpenAIProvider(make_route(openai_stub.url + "/"))
    try:
        result = await p.complete(chat(), timeout=5)
    finally:
        await p.aclose()
    assert openai_stub.requests[-1].path == "/chat/completions"
    assert result.content == reply_text(PROMPT)


@MODES
async def test_traceparent_of_the_active_span(
    provider: OpenAIProvider, openai_stub: OpenAIStub, mode: str
) -> None:
    # A local SDK provider: a real, sampled span without touching the global one.
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("chat stub-model") as span:
        await call(provider, mode)
    context = span.get_span_context()
    assert openai_stub.requests[-1].headers["traceparent"] == (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    )
    assert context.trace_flags.sampled

    await call(provider, mode)
    assert "traceparent" not in openai_stub.requests[-1].headers


@pytest.mark.parametrize(
    ("base_url", "address", "port"),
    [
        ("https://api.openai.com/v1", "api.openai.com", 443),
        ("http://localhost:11434/v1", "localhost", 11434),
        ("http://vllm.internal", "vllm.internal", 80),
        ("http://[::1]:8000/v1", "::1", 8000),
    ],
)
async def test_server_address_and_port(base_url: str, address: str, port: int) -> None:
    p = OpenAIProvider(make_route(base_url))
    try:
        assert (p.name, p.server_address, p.server_port) == ("openai", address, port)
    finally:
        await p.aclose()


# --- answers -----------------------------------------------------------------------------------


async def test_unary_result(provider: OpenAIProvider, openai_stub: OpenAIStub) -> None:
    openai_stub.next_responses.append(Reply(model="stub-model-2024-08-06"))

    result = await provider.complete(chat(), timeout=5)

    assert result.id.startswith("chatcmpl-")
    assert result.model == "stub-model-2024-08-06"  # the upstream's, not the requested name
    assert result.content == reply_text(PROMPT)
    assert result.finish_reason == "stop"
    assert (result.input_tokens, result.output_tokens) == (INPUT_TOKENS, OUTPUT_TOKENS)


async def test_unary_length_finish(provider: OpenAIProvider) -> None:
    result = await provider.complete(chat(max_tokens=2), timeout=5)
    assert (result.content, result.finish_reason, result.output_tokens) == (
        "Echo: hello",
        "length",
        2,
    )


async def test_unary_fallbacks_for_sparse_answers(
    provider: OpenAIProvider, openai_stub: OpenAIStub
) -> None:
    sparse = {"choices": [{"message": {"role": "assistant", "content": None}}]}
    openai_stub.next_responses.append(Reply(body=json.dumps(sparse)))

    result = await provider.complete(chat(), timeout=5)

    assert result == ChatResult(
        id="",
        model="stub-model",
        content="",
        finish_reason="stop",
        input_tokens=0,
        output_tokens=0,
    )


async def test_unary_without_usage_counts_zero(
    provider: OpenAIProvider, openai_stub: OpenAIStub
) -> None:
    openai_stub.next_responses.append(Reply(usage=False))
    result = await provider.complete(chat(), timeout=5)
    assert (result.content, result.input_tokens, result.output_tokens) == (reply_text(PROMPT), 0, 0)


async def test_stream_deltas_then_one_final_chunk(
    provider: OpenAIProvider, openai_stub: OpenAIStub
) -> None:
    openai_stub.next_responses.append(Reply(model="stub-model-2024-08-06"))

    chunks = await collect(provider)

    *deltas, final = chunks
    assert "".join(c.delta for c in deltas) == reply_text(PROMPT)
    assert all(c.delta and not c.is_final for c in deltas)  # the empty role chunk is skipped
    assert final.is_final
    assert final.delta == ""
    assert (final.finish_reason, final.input_tokens, final.output_tokens) == (
        "stop",
        INPUT_TOKENS,
        OUTPUT_TOKENS,
    )
    assert {(c.id, c.model) for c in chunks} == {(chunks[0].id, "stub-model-2024-08-06")}
    assert chunks[0].id.startswith("chatcmpl-")


async def test_stream_without_usage_leaves_tokens_unknown(
    provider: OpenAIProvider, openai_stub: OpenAIStub
) -> None:
    openai_stub.next_responses.append(Reply(usage=False))  # a server ignoring stream_options
    final = (await collect(provider))[-1]
    assert (final.finish_reason, final.input_tokens, final.output_tokens) == ("stop", None, None)


@pytest.mark.parametrize(
    ("events", "finish", "usage"),
    [
        pytest.param(
            [chunk("Hi"), usage_chunk(7, 1), chunk(finish="length"), "[DONE]"],
            "length",
            (7, 1),
            id="usage-before-finish",
        ),
        pytest.param(
            [chunk("Hi"), chunk(finish="length"), usage_chunk(7, 1), "[DONE]"],
            "length",
            (7, 1),
            id="usage-after-finish",
        ),
        pytest.param([chunk("Hi"), "[DONE]"], "stop", (None, None), id="done-without-finish"),
        pytest.param(
            [chunk("Hi"), chunk(finish="content_filter")],
            "content_filter",
            (None, None),
            id="finish-without-done",
        ),
    ],
)
async def test_stream_endings(
    provider: OpenAIProvider,
    openai_stub: OpenAIStub,
    events: list[object],
    finish: str,
    usage: tuple[int | None, int | None],
) -> None:
    openai_stub.next_responses.append(Reply(events=[sse(e) for e in events]))

    *deltas, final = await collect(provider)

    assert [c.delta for c in deltas] == ["Hi"]
    assert (final.finish_reason, (final.input_tokens, final.output_tokens)) == (finish, usage)
    assert (final.id, final.model) == ("chatcmpl-raw", "raw-model")


async def test_sse_framing(provider: OpenAIProvider, openai_stub: OpenAIStub) -> None:
    a, b, c = (json.dumps(chunk(t)) for t in "ABC")
    split = c.index(', "model"')
    openai_stub.next_responses.append(
        Reply(
            events=[
                ": keep-alive comment\n\n",
                f"event: message\nid: 1\nretry: 100\ndata: {a}\n\n",
                f"data:{b}\r\n\r\n",  # no space after the colon, CRLF line ends
                # One event over three HTTP chunks and two data lines (joined by "\n").
                f"data: {c[:5]}",
                f"{c[5:split]}\ndata: ",
                f"{c[split:]}\n\n",
                sse(chunk(finish="stop")),
                "data: [DONE]\n\n",
            ]
        )
    )

    chunks = await collect(provider)

    assert [x.delta for x in chunks] == ["A", "B", "C", ""]
    assert chunks[-1].finish_reason == "stop"
