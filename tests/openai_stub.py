"""An OpenAI-compatible Chat Completions server for tests: real HTTP on 127.0.0.1, scriptable.

It runs an asyncio server in a thread of its own, so sync tests, async tests and the gateway
under test (in the test's loop) all talk to it over real sockets, and a test that blocks its
own loop cannot stall the server. It speaks the HTTP/1.1 a client needs: keep-alive,
Content-Length request bodies, Content-Length or chunked responses.

    with OpenAIStub() as stub:                                # or the `openai_stub` fixture
        route = RouteConfig(name="gpt", provider="openai", model="gpt-test",
                            base_url=stub.base_url)           # ".../v1"; `stub.url` works too
        stub.next_responses.append(Fault(status=429, message="Rate limit reached"))
        stub.by_model["slow-model"] = Reply(delay=5)
        ...
        sent = stub.requests[-1]                              # what the client really sent
        assert sent.body["stream_options"] == {"include_usage": True}
        assert sent.headers["authorization"] == "Bearer sk-test"

The answer is `reply_text(last user message)` — "Echo: " and the prompt — in whitespace-led
words, one word per stream chunk. Usage counts words: `prompt_tokens` over the content of every
message, `completion_tokens` over the answer. `max_tokens` cuts the answer (finish_reason
"length") and `stop` ends it at the first stop string, as a model would. Streams follow
OpenAI's wire format exactly: a role chunk, content chunks, a finish_reason chunk, then — only
when the request asked with `stream_options.include_usage` — a usage chunk with empty
`choices` (and `"usage": null` on every chunk before it), then `data: [DONE]`.

Each request is answered by the first `Reply` in `next_responses` (consumed), else by
`by_model[<requested model>]` (standing), else by `Reply()`, the normal answer. A `Reply`
scripts what a real upstream does wrong: an error status with OpenAI's error JSON (`Fault`), a
raw body (invalid JSON, an HTML error page), a delay before the status line, a slow stream, a
stream cut after N chunks (connection dropped, or body ended cleanly without [DONE]), or raw
SSE text. With `api_key` set, requests without exactly that bearer key get OpenAI's 401, which
echoes the presented key back — as some providers do — to test that clients redact it.

Every request is recorded (`RecordedRequest`) before it is answered, so a test sees requests it
timed out on, and learns whether the client went away mid-response (`client_gone`).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import itertools
import json
import re
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import pytest

__all__ = [
    "Fault",
    "OpenAIStub",
    "RecordedRequest",
    "Reply",
    "openai_stub",
    "reply_text",
    "sse",
]

CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
_WORD = re.compile(r"\s*\S+")
_MAX_BODY = 16 * 1024 * 1024
# How often a waiting handler checks whether its client hung up.
_POLL_S = 0.005
_JOIN_S = 5.0
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_denied",
    404: "invalid_request_error",
    429: "requests",
}


def reply_text(prompt: str) -> str:
    """The stub's answer to a last user message `prompt` (before max_tokens/stop apply)."""
    return f"Echo: {prompt}"


def sse(data: Any) -> str:
    """One SSE event carrying `data` (JSON-encoded unless already a string), for `Reply.events`."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


@dataclass(frozen=True, kw_only=True)
class Reply:
    """How the stub answers one request; every default means "like a healthy upstream"."""

    status: int = 200
    # Non-2xx: the OpenAI-style body `{"error": {"message", "type", "param", "code"}}`.
    message: str = ""
    error_type: str = ""  # derived from the status when empty
    # Sent verbatim instead of anything generated, with any status (invalid JSON, HTML, …).
    body: str | bytes | None = None
    content_type: str = "application/json"  # of `body`
    # Seconds before the status line: a slow upstream. Ends early if the client hangs up.
    delay: float = 0.0
    content: str | None = None  # the answer, instead of reply_text(prompt)
    model: str | None = None  # the `model` reported back, instead of the requested one
    finish_reason: str | None = None  # instead of "stop" / "length"
    usage: bool = True  # False: never report usage, even when asked (servers that ignore it)
    token_delay: float | None = None  # seconds between stream events; None: the stub's default
    # Streams: stop after this many content chunks (or `events` items): drop the connection
    # mid-body when `abort`, else end the body cleanly — neither sends [DONE].
    cut_after: int | None = None
    abort: bool = True
    # Streams: raw SSE text instead of the generated events, one HTTP chunk per item, sent
    # verbatim (use `sse()` for well-formed events; nothing is added, not even [DONE]).
    events: Sequence[str] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # extra response headers


@dataclass(frozen=True, kw_only=True)
class Fault(Reply):
    """An error answer in OpenAI's format: `Fault(status=429, message="Rate limit reached")`."""

    status: int = 500
    message: str = "The server had an error while processing your request."


@dataclass(eq=False)
class RecordedRequest:
    method: str
    path: str  # with the query string, as sent
    headers: dict[str, str]  # names lowercased; repeated headers joined with ", "
    raw_body: bytes
    body: Any  # the parsed JSON body, None when it was not JSON
    connection: int  # the TCP connection it came on: 1, 2, …; equal numbers mean keep-alive
    # Set when the response was fully written / when the client hung up before that.
    completed: threading.Event = field(default_factory=threading.Event)
    client_gone: threading.Event = field(default_factory=threading.Event)
    # time.monotonic() when the whole request had been read, and when the stub saw the client
    # hang up (within a few ms of it: waits poll every _POLL_S); None while it has not.
    received_at: float = field(default_factory=time.monotonic)
    client_gone_at: float | None = None

    async def wait_client_gone(self, seconds: float = 5.0) -> bool:
        """For async tests: waits without blocking the loop, which must run to close sockets."""
        return await asyncio.to_thread(self.client_gone.wait, seconds)


class _BadRequest(Exception):
    pass


class OpenAIStub:
    def __init__(self, *, token_delay: float = 0.0, api_key: str | None = None) -> None:
        self.token_delay = token_delay
        self.api_key = api_key
        self.next_responses: deque[Reply] = deque()
        self.by_model: dict[str, Reply] = {}
        self.requests: list[RecordedRequest] = []
        # Tracebacks of the stub's own failures; leaving `with` (so the fixture) fails the test.
        self.errors: list[str] = []
        self.port = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._connections = itertools.count(1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What OpenAI-compatible clients take as base URL: `{url}/v1`."""
        return f"{self.url}/v1"

    def start(self) -> OpenAIStub:
        if self._thread is not None:
            raise RuntimeError("OpenAIStub already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self._main(ready))
            except BaseException as e:
                failure.append(e)
                ready.set()

        self._thread = threading.Thread(target=run, name="openai-stub", daemon=True)
        self._thread.start()
        if not ready.wait(_JOIN_S) or failure:
            self.stop()
            raise RuntimeError("OpenAIStub did not start") from (failure[0] if failure else None)
        return self

    def stop(self) -> None:
        """Close the listener and every connection, and join the thread. Idempotent."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already finished
                loop.call_soon_threadsafe(stopping.set)
        thread.join(_JOIN_S)
        if thread.is_alive():
            raise RuntimeError("OpenAIStub thread did not stop")
        self._thread = None

    def reset(self) -> None:
        """Forget scripted replies and recorded requests (for a stub shared across tests)."""
        self.next_responses.clear()
        self.by_model.clear()
        self.requests.clear()
        self.errors.clear()

    def __enter__(self) -> OpenAIStub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self.errors and exc_type is None:
            raise AssertionError("the OpenAI stub failed:\n" + "\n".join(self.errors))

    # --- the server thread -------------------------------------------------------------------

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for task in self._handlers:
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        conn = _Conn(reader, writer, next(self._connections))
        try:
            while await self._exchange(conn):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up
        except _BadRequest as e:
            await conn.send_whole(400, _error_json(str(e), "invalid_request_error"), close=True)
        except Exception:
            self.errors.append(traceback.format_exc())
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _exchange(self, conn: _Conn) -> bool:
        """Read and answer one request; False when the connection is done."""
        parsed = await _read_request(conn)
        if parsed is None:
            return False
        method, target, version, headers, raw = parsed
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        record = RecordedRequest(method, target, headers, raw, body, conn.number)
        self.requests.append(record)
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        path = target.split("?", 1)[0]

        if path not in CHAT_PATHS:
            message = f"Invalid URL ({method} {path})"
            written = await conn.send_whole(404, _error_json(message, "invalid_request_error"))
        elif method != "POST":
            message = f"Method {method} not allowed"
            written = await conn.send_whole(405, _error_json(message, "invalid_request_error"))
        elif not isinstance(body, dict):
            message = "We could not parse the JSON body of your request."
            written = await conn.send_whole(400, _error_json(message, "invalid_request_error"))
        elif self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            presented = headers.get("authorization", "").removeprefix("Bearer ")
            message = f"Incorrect API key provided: {presented}."
            written = await conn.send_whole(401, _error_json(message, "invalid_request_error"))
        else:
            written = await self._answer(conn, body, self._choose(body))
        if written:
            record.completed.set()
        elif not conn.closed:
            record.client_gone_at = time.monotonic()
            record.client_gone.set()
        return written and keep_alive and not conn.closed

    def _choose(self, body: dict[str, Any]) -> Reply:
        with contextlib.suppress(IndexError):
            return self.next_responses.popleft()
        return self.by_model.get(str(body.get("model")), Reply())

    async def _answer(self, conn: _Conn, body: dict[str, Any], reply: Reply) -> bool:
        """True when the whole response was written."""
        if reply.delay and not await conn.pause(reply.delay):
            return False
        extra = dict(reply.headers)
        if reply.body is not None:
            raw = reply.body.encode() if isinstance(reply.body, str) else reply.body
            return await conn.send_whole(reply.status, raw, reply.content_type, extra)
        if not 200 <= reply.status < 300:
            error_type = reply.error_type or _ERROR_TYPES.get(reply.status, "server_error")
            error = _error_json(reply.message, error_type)
            return await conn.send_whole(reply.status, error, headers=extra)
        answer = _Answer.plan(body, reply, len(self.requests))
        delay = self.token_delay if reply.token_delay is None else reply.token_delay
        if body.get("stream") is True:
            options = body.get("stream_options")
            asked = isinstance(options, dict) and options.get("include_usage") is True
            return await self._stream(conn, answer, reply, delay, asked and reply.usage, extra)
        # A non-streamed answer takes as long as the stream of it would.
        pause = delay * max(len(answer.pieces) - 1, 0)
        if pause and not await conn.pause(pause):
            return False
        completion = json.dumps(answer.completion(reply.usage)).encode()
        return await conn.send_whole(200, completion, headers=extra)

    async def _stream(
        self,
        conn: _Conn,
        answer: _Answer,
        reply: Reply,
        delay: float,
        usage: bool,
        extra: dict[str, str],
    ) -> bool:
        if reply.events is not None:
            events = list(reply.events)
            if reply.cut_after is not None:
                events = events[: reply.cut_after]
        else:
            events = [sse(chunk) for chunk in answer.chunks(usage)]
            events.append(sse("[DONE]"))
            if reply.cut_after is not None:
                # The role chunk and at most cut_after content chunks; never the finish chunk.
                events = events[: 1 + min(reply.cut_after, len(answer.pieces))]
        headers = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
        if not await conn.start_chunked(200, headers | extra):
            return False
        for i, event in enumerate(events):
            if i and delay and not await conn.pause(delay):
                return False
            if not await conn.send_chunk(event.encode()):
                return False
        if reply.cut_after is not None and reply.abort:
            # Mid-body, without the terminating chunk: what a crashed upstream looks like.
            conn.drop()
            return False
        return await conn.end_chunked()


@dataclass
class _Answer:
    id: str
    model: str
    pieces: list[str]
    finish_reason: str
    prompt_tokens: int
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def plan(cls, body: dict[str, Any], reply: Reply, number: int) -> _Answer:
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        contents = [str(m.get("content") or "") for m in messages]
        prompt = ""
        for message, content in zip(messages, contents, strict=True):
            if message.get("role") == "user":
                prompt = content
        text = reply_text(prompt) if reply.content is None else reply.content
        finish = "stop"
        stops = body.get("stop") or []
        for stop in [stops] if isinstance(stops, str) else stops:
            if isinstance(stop, str) and stop and (cut := text.find(stop)) >= 0:
                text = text[:cut]
        pieces = _WORD.findall(text)
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, int) and 0 <= max_tokens < len(pieces):
            pieces, finish = pieces[:max_tokens], "length"
        return cls(
            id=f"chatcmpl-stub{number}",
            model=reply.model or str(body.get("model") or ""),
            pieces=pieces,
            finish_reason=reply.finish_reason or finish,
            prompt_tokens=sum(len(c.split()) for c in contents),
        )

    def usage(self) -> dict[str, int]:
        completion = len(self.pieces)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }

    def completion(self, usage: bool) -> dict[str, Any]:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": "".join(self.pieces), "refusal": None},
            "logprobs": None,
            "finish_reason": self.finish_reason,
        }
        extra = {"usage": self.usage()} if usage else {}
        return {**self._envelope("chat.completion"), "choices": [choice], **extra}

    def chunks(self, usage: bool) -> Iterator[dict[str, Any]]:
        """OpenAI's chunks; with `usage`, every chunk has `"usage": null` but the last."""

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            extra = {"usage": None} if usage else {}
            return {**self._envelope("chat.completion.chunk"), "choices": [choice], **extra}

        yield chunk({"role": "assistant", "content": "", "refusal": None}, None)
        for piece in self.pieces:
            yield chunk({"content": piece}, None)
        yield chunk({}, self.finish_reason)
        if usage:
            yield {**self._envelope("chat.completion.chunk"), "choices": [], "usage": self.usage()}

    def _envelope(self, kind: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_stub",
        }


class _Conn:
    """One client connection, as the handler writes to it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        self.reader = reader
        self.writer = writer
        self.number = n
        self.closed = False  # we answered with `connection: close` or dropped it

    def gone(self) -> bool:
        # The transport keeps reading while the handler writes, so a hang-up shows as EOF (or
        # a reset) on the reader without the handler consuming any bytes of a next request.
        return (
            self.reader.at_eof() or self.reader.exception() is not None or self.writer.is_closing()
        )

    async def pause(self, seconds: float) -> bool:
        """Sleep, but stop as soon as the client hangs up; False if it did."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self.gone():
                return False
            await asyncio.sleep(min(left, _POLL_S))
        return not self.gone()

    async def _write(self, data: bytes) -> bool:
        if self.gone():
            return False
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            return False
        return True

    async def send_whole(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
        *,
        close: bool = False,
    ) -> bool:
        head = {"content-type": content_type, "content-length": str(len(body))}
        if close:
            head["connection"] = "close"
            self.closed = True
        return await self._write(_head(status, head | dict(headers or {})) + body)

    async def start_chunked(self, status: int, headers: Mapping[str, str]) -> bool:
        return await self._write(_head(status, {**headers, "transfer-encoding": "chunked"}))

    async def send_chunk(self, data: bytes) -> bool:
        return await self._write(b"%x\r\n%s\r\n" % (len(data), data))

    async def end_chunked(self) -> bool:
        return await self._write(b"0\r\n\r\n")

    def drop(self) -> None:
        self.closed = True
        self.writer.close()


def _head(status: int, headers: Mapping[str, str]) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _error_json(message: str, error_type: str) -> bytes:
    error = {"message": message, "type": error_type, "param": None, "code": None}
    return json.dumps({"error": error}).encode()


async def _read_request(
    conn: _Conn,
) -> tuple[str, str, str, dict[str, str], bytes] | None:
    """(method, target, version, headers, body), or None when the client closed cleanly."""
    try:
        head = await conn.reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if e.partial.strip():
            raise _BadRequest("incomplete request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise _BadRequest("request head too large") from None
    request_line, *lines = head[:-4].decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(f"bad request line {request_line!r}")
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise _BadRequest(f"bad header line {line!r}")
        name, value = name.strip().lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if "transfer-encoding" in headers:
        raise _BadRequest("chunked request bodies are not supported")
    length = headers.get("content-length", "0")
    if not length.isdigit() or int(length) > _MAX_BODY:
        raise _BadRequest(f"bad content-length {length!r}")
    body = await conn.reader.readexactly(int(length))
    return parts[0], parts[1], parts[2], headers, body


@pytest.fixture
def openai_stub() -> Iterator[OpenAIStub]:
    """A started `OpenAIStub`, stopped after the test; fails the test if the stub itself broke
    (leaving its ``with`` block does)."""
    with OpenAIStub() as stub:
        yield stub
