"""OpenAIProvider against the OpenAI stub over real HTTP: every way an upstream answers with an
error (HTTP codes, error bodies, mid-stream error events), and the API key never in an error."""

from __future__ import annotations

import grpc
import pytest

from gateway.errors import (
    UpstreamCredentials,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamProtocolError,
)
from gateway.providers.openai import OpenAIProvider
from tests.openai_provider_support import (  # noqa: F401 - fixtures
    ENV,
    KEY,
    MODES,
    _environment,
    assert_no_key,
    call,
    chat,
    chunk,
    collect,
    make_route,
    provider_fixture,
    read_into,
)
from tests.openai_stub import Fault, OpenAIStub, Reply, sse

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
