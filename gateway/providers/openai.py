"""The `openai` provider: any OpenAI-compatible Chat Completions endpoint.

OpenAI, vLLM, Ollama, llama.cpp's server, LM Studio, Together and Groq all speak the same
`POST {base_url}/chat/completions`, so one provider serves them all. It sends only the
parameters the caller set, so each server applies its own defaults, and asks streams for a
usage chunk (`stream_options.include_usage`) so streamed calls are metered like unary ones.

Failures map onto `gateway.errors`; the HTTP status → gRPC code table lives there, not here:

    no key in the environment           UpstreamCredentials    before anything is sent
    budget spent (any phase)            UpstreamTimeout
    failure before a response arrived   UpstreamUnreachable    connect refused, reset, DNS
    non-2xx                             UpstreamHTTPError      with the upstream's own message
    body that breaks off, bad JSON/SSE  UpstreamProtocolError  the answer cannot be trusted
    `{"error": …}` event inside an SSE stream: UpstreamHTTPError when it carries an HTTP status
    in `code` (vLLM does), else UpstreamProtocolError.

Whether the request got out decides unreachable vs protocol error: before the status line the
upstream cannot have produced anything, after it the answer is truncated or garbled.

`timeout` is the whole budget, checked as an absolute deadline around every await. A single
`asyncio.timeout` cannot span a stream: it would cancel whatever the *consumer* awaits between
chunks, so the deadline is re-armed per read instead; time the consumer spends between chunks
still counts. The key is read from the environment at each call (rotation needs no restart),
kept only for that call, and never logged or put into a message or repr: upstream messages are
redacted because some servers echo the key back, and httpx exceptions are described rather
than chained because their request objects hold the headers.

One pooled keep-alive client serves the route. After `data: [DONE]` a stream reads the end of
the body before its final chunk, so the connection goes back to the pool even when the consumer
stops there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import ssl
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.chat import ChatChunk, ChatRequest, ChatResult
from gateway.config import RouteConfig
from gateway.errors import (
    UpstreamCredentials,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnreachable,
)

_TRACE_CONTEXT = TraceContextTextMapPropagator()

__all__ = ["OpenAIProvider"]

_T = TypeVar("_T")

# Keep-alive expiry stays under the 60 s idle timeout of common load balancers, so a pooled
# connection is rarely closed by the far side just as it is reused; servers that close sooner
# (uvicorn, 5 s) are noticed by httpcore's idle check before reuse. The connection cap bounds
# sockets per route: one long stream holds one connection for its whole duration.
_LIMITS = httpx.Limits(max_connections=256, max_keepalive_connections=64, keepalive_expiry=30.0)
_MESSAGE_MAX_CHARS = 500
# An error body is read for its message only; a proxy's multi-megabyte HTML page is not.
_ERROR_BODY_MAX_BYTES = 64 * 1024
# After [DONE], reading the body's end (normally already in flight) lets the connection go
# back to the pool; a server that keeps the body open after [DONE] costs at most this, and its
# connection is then dropped instead of reused.
_DRAIN_SECONDS = 0.1
_REDACTED = "[redacted]"
# h11 quotes an illegal header value in its exception message; refusing such keys up front
# keeps a mangled key out of every error.
_HEADER_TOKEN = re.compile(r"[\x21-\x7e]+")


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # What httpx builds per client (certifi, or SSL_CERT_FILE/SSL_CERT_DIR), built once: loading
    # the CA bundle costs tens of milliseconds per route otherwise.
    return httpx.create_ssl_context()


class _Malformed(Exception):
    """A 2xx body that does not have the Chat Completions shape."""

    def __init__(self, problem: str, raw: bytes = b"") -> None:
        super().__init__(problem)
        self.problem = problem
        self.raw = raw


@dataclass(frozen=True, slots=True)
class _Call:
    key: str | None = field(repr=False)
    budget: float
    # In `loop.time()` terms.
    deadline: float


class OpenAIProvider:
    name = "openai"

    def __init__(self, route: RouteConfig) -> None:
        base_url = route.base_url.rstrip("/")
        url = httpx.URL(base_url)
        self.server_address: str | None = url.host or None
        self.server_port: int | None = url.port or (443 if url.scheme == "https" else 80)
        self._route = route.name
        self._key_env = route.api_key_env
        self._url = f"{base_url}/chat/completions"
        # No httpx timeouts: the per-call asyncio deadline bounds every phase, pool waits too.
        self._client = httpx.AsyncClient(
            limits=_LIMITS,
            verify=_tls_context(),
            timeout=None,  # noqa: S113 - bounded by the per-call deadline instead
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        # Not the base_url: it may carry user:password.
        return (
            f"OpenAIProvider(route={self._route!r}, "
            f"upstream={self.server_address}:{self.server_port})"
        )

    async def complete(
        self,
        request: ChatRequest,
        *,
        timeout: float,
    ) -> ChatResult:
        call = self._start(timeout)
        async with contextlib.AsyncExitStack() as stack:
            response = await self._open(stack, request, call, stream=False)
            raw = await self._receive(response.aread(), call)
        try:
            return _parse_completion(_json_object(raw), request.model)
        except _Malformed as e:
            raise self._malformed(e, call) from None

    async def stream(
        self,
        request: ChatRequest,
        *,
        timeout: float,
    ) -> AsyncIterator[ChatChunk]:
        # The body runs at the first __anext__, so key lookup, deadline and trace context all
        # belong to the consumer's first read, inside the span the caller opened around it.
        call = self._start(timeout)
        async with contextlib.AsyncExitStack() as stack:
            response = await self._open(stack, request, call, stream=True)
            lines = response.aiter_lines()
            sse = _SSEDecoder()
            state = _StreamState(id="", model=request.model)
            done = False
            loop = asyncio.get_running_loop()
            while not done:
                # Checked here too: the consumer's time between chunks is spent budget, even
                # when the next line is already buffered and the read would not wait.
                if loop.time() >= call.deadline:
                    raise self._timed_out(call)
                line = await self._receive(anext(lines, None), call)
                payload = sse.flush() if line is None else sse.feed(line)
                if payload is not None and payload.strip() == "[DONE]":
                    done = True
                elif payload is not None:
                    try:
                        delta = state.add(self._event(payload, call))
                    except _Malformed as e:
                        raise self._malformed(e, call) from None
                    if delta:
                        yield ChatChunk(id=state.id, model=state.model, delta=delta)
                if line is None:
                    break
            if not done and not state.finish_reason:
                content_type = response.headers.get("content-type", "none")
                raise self._malformed(
                    _Malformed(
                        f"stream ended without [DONE] or a finish_reason "
                        f"(content-type {content_type})"
                    ),
                    call,
                )
            # Before the final chunk, not after: consumers stop at the final chunk and never
            # resume the generator.
            await _drain(lines, call.deadline)
            yield ChatChunk(
                id=state.id,
                model=state.model,
                finish_reason=state.finish_reason or "stop",
                input_tokens=state.input_tokens,
                output_tokens=state.output_tokens,
            )

    async def aclose(self) -> None:
        await self._client.aclose()

    # --- request ---------------------------------------------------------------------------

    def _start(self, timeout: float) -> _Call:
        deadline = asyncio.get_running_loop().time() + timeout
        return _Call(key=self._api_key(), budget=timeout, deadline=deadline)

    def _api_key(self) -> str | None:
        if not self._key_env:
            return None
        key = os.environ.get(self._key_env, "").strip()
        if not key:
            raise UpstreamCredentials(
                self._route, f"environment variable {self._key_env} is not set or is empty"
            )
        if not _HEADER_TOKEN.fullmatch(key):
            raise UpstreamCredentials(
                self._route,
                f"environment variable {self._key_env} holds characters that cannot appear "
                "in an HTTP header",
            )
        return key

    async def _open(
        self,
        stack: contextlib.AsyncExitStack,
        request: ChatRequest,
        call: _Call,
        *,
        stream: bool,
    ) -> httpx.Response:
        """Send the request and wait for a 2xx status line; the body is left to the caller."""
        headers = {"accept": "text/event-stream" if stream else "application/json"}
        if call.key is not None:
            headers["authorization"] = f"Bearer {call.key}"
        # traceparent only: baggage may carry tenant or user data a third party must not see.
        _TRACE_CONTEXT.inject(headers)
        sending = self._client.stream(
            "POST", self._url, json=_payload(request, stream=stream), headers=headers
        )
        try:
            response = await _within(call.deadline, stack.enter_async_context(sending))
        except (TimeoutError, httpx.TimeoutException):
            raise self._timed_out(call) from None
        except httpx.HTTPError as e:
            raise UpstreamUnreachable(
                self._route,
                _redact(
                    f"cannot reach {self.server_address}:{self.server_port}: {_describe(e)}",
                    call.key,
                ),
            ) from None
        if not response.is_success:
            raise UpstreamHTTPError(
                self._route, response.status_code, await self._error_message(response, call)
            )
        return response

    # --- response --------------------------------------------------------------------------

    async def _receive(self, step: Awaitable[_T], call: _Call) -> _T:
        """One read of an accepted response, within the deadline."""
        try:
            return await _within(call.deadline, step)
        except (TimeoutError, httpx.TimeoutException):
            raise self._timed_out(call) from None
        except httpx.HTTPError as e:
            broke = _Malformed(f"the response broke off: {_describe(e)}")
            raise self._malformed(broke, call) from None

    async def _error_message(self, response: httpx.Response, call: _Call) -> str:
        body = bytearray()
        try:
            async with asyncio.timeout_at(call.deadline):
                async for piece in response.aiter_bytes():
                    body += piece
                    if len(body) >= _ERROR_BODY_MAX_BYTES:
                        break
        except (TimeoutError, httpx.HTTPError):
            # The status is the news; a body that cannot be read in time only loses detail.
            pass
        message = _upstream_message(bytes(body)) or response.reason_phrase
        if response.is_redirect:
            # Redirects are not followed (a POST must not silently change target); this is
            # nearly always an http:// base_url for an https:// service.
            location = response.headers.get("location", "")
            message = f"{message} (redirect to {location}; check base_url)"
        return _clip(_redact(message, call.key))

    def _event(self, payload: str, call: _Call) -> dict[str, Any]:
        event = _json_object(payload.encode())
        error = event.get("error")
        if error is None:
            return event
        message = _clip(_redact(_error_text(error) or json.dumps(error), call.key))
        status = error.get("code") if isinstance(error, dict) else None
        if isinstance(status, int) and 400 <= status <= 599:
            raise UpstreamHTTPError(self._route, status, message)
        raise UpstreamProtocolError(
            self._route, f"upstream reported an error mid-stream: {message}"
        )

    def _timed_out(self, call: _Call) -> UpstreamError:
        return UpstreamTimeout(self._route, f"no complete answer within {call.budget:g} s")

    def _malformed(self, error: _Malformed, call: _Call) -> UpstreamError:
        problem = _redact(error.problem, call.key)
        if error.raw:
            # Redacted before it is cut, so no fragment of a key survives the cut.
            text = " ".join(error.raw.decode("utf-8", "replace").split()) or "empty body"
            problem = f"{problem}: {_redact(text, call.key)[:200]}"
        return UpstreamProtocolError(self._route, _clip(problem))


def _payload(request: ChatRequest, *, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
    }
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop"] = list(request.stop)
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


async def _within(deadline: float, step: Awaitable[_T]) -> _T:
    async with asyncio.timeout_at(deadline):
        return await step


async def _drain(lines: AsyncIterator[str], deadline: float) -> None:
    limit = min(deadline, asyncio.get_running_loop().time() + _DRAIN_SECONDS)
    with contextlib.suppress(TimeoutError, httpx.HTTPError):
        async with asyncio.timeout_at(limit):
            async for _ in lines:
                pass


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise _Malformed("invalid JSON", raw) from None
    if not isinstance(value, dict):
        raise _Malformed("expected a JSON object", raw)
    return value


def _parse_completion(data: dict[str, Any], requested_model: str) -> ChatResult:
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _Malformed("the answer has no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise _Malformed("choices[0] has no message")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise _Malformed("choices[0].message.content is not a string")
    input_tokens, output_tokens = _usage(data.get("usage"))
    return ChatResult(
        id=_text(data.get("id")),
        model=_text(data.get("model")) or requested_model,
        content=content or "",
        finish_reason=_text(choices[0].get("finish_reason")) or "stop",
        input_tokens=input_tokens or 0,
        output_tokens=output_tokens or 0,
    )


@dataclass(slots=True)
class _StreamState:
    """What a stream has told so far; the final chunk is built from it."""

    id: str
    model: str
    upstream_model: bool = False
    finish_reason: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None

    def add(self, event: dict[str, Any]) -> str:
        """Fold one chunk in and return its text delta ("" when it has none)."""
        if not self.id:
            self.id = _text(event.get("id"))
        if not self.upstream_model and (model := _text(event.get("model"))):
            self.model, self.upstream_model = model, True
        # Usage comes in its own chunk with empty choices, after the finish_reason chunk;
        # servers that report it on every chunk leave the last count standing.
        if isinstance(usage := event.get("usage"), dict):
            self.input_tokens, self.output_tokens = _usage(usage)
        choices = event.get("choices")
        if choices is None or choices == []:
            return ""
        if not isinstance(choices, list) or not isinstance(choices[0], dict):
            raise _Malformed("a stream chunk has malformed choices")
        choice = choices[0]
        if finish := _text(choice.get("finish_reason")):
            self.finish_reason = finish
        delta = choice.get("delta")
        if delta is None:
            return ""
        if not isinstance(delta, dict):
            raise _Malformed("a stream chunk has a malformed delta")
        content = delta.get("content")
        if content is not None and not isinstance(content, str):
            raise _Malformed("a stream chunk's delta.content is not a string")
        return content or ""


class _SSEDecoder:
    """Server-sent events, line by line: the `data` of each event, other fields ignored."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value.removeprefix(" "))
        return None

    def flush(self) -> str | None:
        """The pending event's data. Also called at the end of the body: the spec drops an
        event without its blank line, but some servers omit the last one, and a truly cut
        event fails JSON parsing anyway."""
        if not self._data:
            return None
        data, self._data = "\n".join(self._data), []
        return data


def _usage(usage: Any) -> tuple[int | None, int | None]:
    if not isinstance(usage, dict):
        return None, None
    return _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _error_text(error: Any) -> str:
    """The message in the error shapes compatible servers use: OpenAI's `{"error": {"message"}}`,
    Ollama's `{"error": "…"}`, FastAPI's `{"detail": "…"}`."""
    if isinstance(error, str):
        return error
    if isinstance(error, dict):
        for key in ("message", "detail"):
            if isinstance(error.get(key), str):
                return error[key]
    return ""


def _upstream_message(body: bytes) -> str:
    text = body.decode("utf-8", "replace")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        message = _error_text(doc.get("error")) or _error_text(doc)
        if message:
            return message
    # Whitespace collapsed: an HTML error page becomes one readable status line.
    return " ".join(text.split())


def _redact(text: str, key: str | None) -> str:
    if not key:
        return text
    # The JSON-escaped form too, for servers that echo the key inside a raw JSON body.
    for form in {key, json.dumps(key)[1:-1]}:
        text = text.replace(form, _REDACTED)
    return text


def _clip(text: str) -> str:
    """Cut after redaction, so a cut never leaves part of a key behind."""
    if len(text) <= _MESSAGE_MAX_CHARS:
        return text
    return text[:_MESSAGE_MAX_CHARS] + "…"


def _describe(error: Exception) -> str:
    detail = str(error)
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__
