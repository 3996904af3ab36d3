"""OpenAIProvider against the OpenAI stub over real HTTP: what goes on the wire, what comes back,
and every way an upstream fails."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from gateway.chat import ChatChunk, ChatMessage, ChatRequest, ChatResult
from gateway.config import RouteConfig
from gateway.errors import (
    UpstreamCredentials,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gateway.providers.openai import OpenAIProvider
from tests.openai_stub import Fault, OpenAIStub, Reply, openai_stub, reply_text, sse

__all__ = ["openai_stub"]  # imported to register the fixture for this module

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


def make_route(base_url: str, *, api_key_env: str = ENV) -> RouteConfig:
    return RouteConfig(
        name="stubbed",
        provider="openai",
        model="stub-model",
        base_url=base_url,
        api_key_env=api_key_env,
    )


@pytest.fixture
async def provider(openai_stub: OpenAIStub) -> AsyncIterator[OpenAIProvider]:
    p = OpenAIProvider(make_route(openai_stub.base_url))
    yield p
    await p.aclose()


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


@pytest.fixture
def refused_url() -> Iterator[str]:
    # Bound but not listening: connections are refused and no one else can take the port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def assert_no_key(error: BaseException) -> None:
    for text in (str(error), repr(error), *map(str, error.args), *map(str, vars(error).values())):
        assert KEY not in text
        assert KEY[:10] not in text  # not even a fragment left by truncation


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


# --- upstream errors ---------------------------------------------------------------------------


@MODES
@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, grpc.StatusCode.INVALID_ARGUMENT),
        (401, grpc.StatusCode.FAILED_PRECONDITION),
        (404, grpc.StatusCode.NOT_FOUND),
        (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (500, grpc.StatusCode.UNAVAILABLE),
    ],
)
async def test_http_errors_map_to_grpc_codes(
    provider: OpenAIProvider,
    openai_stub: OpenAIStub,
    mode: str,
    status: int,
    code: grpc.StatusCode,
) -> None:
    openai_stub.next_responses.append(Fault(status=status, message=f"upstream says {status}"))

    with pytest.raises(UpstreamHTTPError) as caught:
        await call(provider, mode)

    error = caught.value
    assert (error.status, error.code, error.error_type) == (status, code, str(status))
    assert error.upstream_message == f"upstream says {status}"
    assert f"upstream says {status}" in error.message
    assert error.route == "stubbed"


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        pytest.param(
            Reply(status=502, body="<html>\n  <h1>502   Bad Gateway</h1>\n</html>\n"),
            "<html> <h1>502 Bad Gateway</h1> </html>",
            id="html-page",
        ),
        pytest.param(
            Reply(status=404, body='{"error": "model \\"llama9\\" not found"}'),
            'model "llama9" not found',
            id="ollama-shape",
        ),
        pytest.param(
            Reply(status=422, body='{"detail": "field required"}'), "field required", id="fastapi"
        ),
        pytest.param(Reply(status=503, body=""), "Service Unavailable", id="empty-body"),
        pytest.param(
            Reply(status=308, body="", headers={"location": "https://api.example/v1/x"}),
            "Permanent Redirect (redirect to https://api.example/v1/x; check base_url)",
            id="redirect",
        ),
    ],
)
async def test_upstream_message_from_other_error_bodies(
    provider: OpenAIProvider, openai_stub: OpenAIStub, reply: Reply, message: str
) -> None:
    openai_stub.next_responses.append(reply)
    with pytest.raises(UpstreamHTTPError) as caught:
        await provider.complete(chat(), timeout=5)
    assert (caught.value.status, caught.value.upstream_message) == (reply.status, message)


async def test_long_upstream_message_is_clipped(
    provider: OpenAIProvider, openai_stub: OpenAIStub
) -> None:
    openai_stub.next_responses.append(Fault(status=400, message="x" * 5000))
    with pytest.raises(UpstreamHTTPError) as caught:
        await provider.complete(chat(), timeout=5)
    assert caught.value.upstream_message == "x" * 500 + "…"


async def test_wrong_path_is_not_found(openai_stub: OpenAIStub) -> None:
    p = OpenAIProvider(make_route(openai_stub.url + "/v2"))
    try:
        with pytest.raises(UpstreamHTTPError) as caught:
            await p.complete(chat(), timeout=5)
    finally:
        await p.aclose()
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert "Invalid URL (POST /v2/chat/completions)" in caught.value.upstream_message


@pytest.mark.parametrize(
    ("error", "kind", "status"),
    [
        ({"message": "prompt too long", "code": 400}, UpstreamHTTPError, 400),  # vLLM
        ({"message": "prompt too long", "type": "server_error"}, UpstreamProtocolError, None),
    ],
)
async def test_error_event_mid_stream(
    provider: OpenAIProvider,
    openai_stub: OpenAIStub,
    error: dict[str, object],
    kind: type[UpstreamError],
    status: int | None,
) -> None:
    openai_stub.next_responses.append(Reply(events=[sse(chunk("Hi")), sse({"error": error})]))
    received: list[str] = []
    with pytest.raises(kind) as caught:
        await read_into(received, provider)
    assert received == ["Hi"]
    assert "prompt too long" in caught.value.message
    assert getattr(caught.value, "status", None) == status


# --- credentials and redaction -------------------------------------------------------------------


@MODES
@pytest.mark.parametrize("value", [None, "", "   "])
async def test_missing_key_names_the_variable(
    provider: OpenAIProvider,
    openai_stub: OpenAIStub,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    value: str | None,
) -> None:
    if value is None:
        monkeypatch.delenv(ENV)
    else:
        monkeypatch.setenv(ENV, value)

    with pytest.raises(UpstreamCredentials) as caught:
        await call(provider, mode)

    assert ENV in caught.value.message
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert openai_stub.requests == []  # nothing went out without a key


async def test_key_unfit_for_a_header_is_refused_without_echo(
    provider: OpenAIProvider, openai_stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad_key = KEY[:8] + "\x1b" + KEY[8:]
    monkeypatch.setenv(ENV, bad_key)
    with pytest.raises(UpstreamCredentials) as caught:
        await provider.complete(chat(), timeout=5)
    assert ENV in caught.value.message
    assert_no_key(caught.value)
    assert bad_key not in caught.value.message
    assert openai_stub.requests == []


@MODES
async def test_key_echoed_by_upstream_is_redacted(
    provider: OpenAIProvider, openai_stub: OpenAIStub, mode: str
) -> None:
    openai_stub.api_key = "sk-the-right-one"  # the stub's 401 echoes the key it was given

    with pytest.raises(UpstreamHTTPError) as caught:
        await call(provider, mode)

    assert openai_stub.requests[-1].headers["authorization"] == f"Bearer {KEY}"
    assert caught.value.status == 401
    assert caught.value.upstream_message == "Incorrect API key provided: [redacted]."
    assert_no_key(caught.value)
    assert KEY not in repr(provider)


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        pytest.param(
            Reply(status=400, body=f"no such key {KEY}", content_type="text/plain"),
            UpstreamHTTPError,
            id="plain-error-body",
        ),
        pytest.param(
            # The key straddles the clip point: redaction must come first.
            Fault(status=400, message="x" * 490 + KEY),
            UpstreamHTTPError,
            id="at-the-clip",
        ),
        pytest.param(Reply(body=f"<html>{KEY}</html>"), UpstreamProtocolError, id="bad-json"),
        pytest.param(
            Reply(body="y" * 190 + KEY), UpstreamProtocolError, id="bad-json-at-the-preview-cut"
        ),
    ],
)
async def test_key_in_any_upstream_text_is_redacted(
    provider: OpenAIProvider,
    openai_stub: OpenAIStub,
    reply: Reply,
    kind: type[UpstreamError],
) -> None:
    openai_stub.next_responses.append(reply)
    with pytest.raises(kind) as caught:
        await provider.complete(chat(), timeout=5)
    assert_no_key(caught.value)


async def test_key_in_a_mid_stream_error_is_redacted(
    provider: OpenAIProvider, openai_stub: OpenAIStub
) -> None:
    error = {"error": {"message": f"key {KEY} revoked", "code": 401}}
    openai_stub.next_responses.append(Reply(events=[sse(error)]))
    with pytest.raises(UpstreamHTTPError) as caught:
        await collect(provider)
    assert caught.value.upstream_message == "key [redacted] revoked"
    assert_no_key(caught.value)


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
