"""The server interceptor: one SERVER span and the RPC metrics for every `aigw.*` call.

Why our own and not opentelemetry-instrumentation-grpc: that package emits no metrics, uses the
pre-1.37 attribute names and a span name with a leading slash, and breaks coroutine-style aio
server-streaming handlers. This one follows the current RPC conventions: span name
`aigw.v1.Completion/Complete`, `rpc.system.name`, `rpc.method`, `rpc.response.status_code`
(the status name as a string), `error.type` on any non-OK status, server and peer address.
Span status is ERROR only for the codes the conventions call server errors (UNKNOWN,
DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS); a client's bad request is
not the server's failure. Spans are `SpanRecord`s (span_record.py): the request pays for a dict
and a tuple; the SDK span is built later, off the request path.

A W3C `traceparent`/`baggage` in the request metadata makes the span a child of the caller's.
Health checks and reflection are not traced: a probe every few seconds would bury real traffic.

A server-streaming handler is an async generator, and a client's cancel can leave it parked at a
`yield`; the event loop's async-generator finalizer then closes it from another task, in another
`contextvars.Context`. A span made current across that `yield` cannot be reset there (a context
variable resets only in the Context it was set in; OpenTelemetry's detach logs an ERROR per
attempt, so any client could fill the log). So a stream's span is never made current in the
caller's context: the handler's generator runs, step by
step, in a Context of its own where the span is current (`_RunIn`), the way a task runs its
coroutine, and its closing runs there too.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any, Generic, TypeVar

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanContext, SpanKind, StatusCode

from gateway.errors import cancellation
from gateway.telemetry.catalog import Attr
from gateway.telemetry.metrics import Attributes, GatewayMetrics
from gateway.telemetry.span_record import CURRENT_SPAN, SpanRecord, SpanRecorder

__all__ = ["TelemetryInterceptor", "parse_peer"]

_TRACED_PREFIX = "/aigw."
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def parse_peer(peer: str) -> tuple[str, int | None]:
    """`ipv4:1.2.3.4:5`, `ipv6:[::1]:5`, `unix:/path` → (address, port)."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host, _, port = rest.rpartition(":")
        return host.strip("[]"), int(port) if port.isdigit() else None
    return rest or peer, None


class _Method:
    """What is fixed for one RPC method, computed once."""

    __slots__ = ("by_code", "name", "span_attrs")

    def __init__(self, name: str, server_address: str, server_port: int) -> None:
        self.name = name
        self.span_attrs: dict[str, str | int] = {
            Attr.RPC_SYSTEM: "grpc",
            Attr.RPC_METHOD: name,
            Attr.SERVER_ADDRESS: server_address,
            Attr.SERVER_PORT: server_port,
        }
        self.by_code: dict[grpc.StatusCode, Attributes] = {
            code: {Attr.RPC_SYSTEM: "grpc", Attr.RPC_METHOD: name, Attr.RPC_STATUS: code.name}
            for code in grpc.StatusCode
        }


class TelemetryInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self, spans: SpanRecorder, metrics: GatewayMetrics, server_address: str, server_port: int
    ) -> None:
        self._spans = spans
        self._metrics = metrics
        self._server_address = server_address
        self._server_port = server_port
        self._methods: dict[str, _Method] = {}

    def set_server_port(self, port: int) -> None:
        """The port is known only once the server has bound (port 0 in tests)."""
        self._server_port = port
        self._methods.clear()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        path: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or not path.startswith(_TRACED_PREFIX):
            return handler
        method = self._methods.get(path)
        if method is None:
            method = _Method(path[1:], self._server_address, self._server_port)
            self._methods[path] = method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _start(
        self, method: _Method, context: grpc.aio.ServicerContext
    ) -> tuple[SpanRecord, float]:
        """The server span: a child of the caller's when the metadata carries one."""
        metadata = context.invocation_metadata() or ()
        parent: SpanContext | None = None
        # Most calls carry no trace context: build the carrier only for those that do.
        if any(key == "traceparent" for key, _ in metadata):
            carrier = {k: v for k, v in metadata if isinstance(v, str)}
            parent = trace.get_current_span(propagate.extract(carrier)).get_span_context()
        address, port = parse_peer(context.peer())
        attributes: dict[str, str | int] = {**method.span_attrs, Attr.PEER_ADDRESS: address}
        if port is not None:
            attributes[Attr.PEER_PORT] = port
        span = self._spans.start(method.name, SpanKind.SERVER, attributes, parent)  # type: ignore[arg-type]
        self._metrics.rpc_started(method.name)
        return span, time.perf_counter()

    def _finish(
        self,
        method: _Method,
        span: SpanRecord,
        started: float,
        code: grpc.StatusCode,
        message: str,
    ) -> None:
        attributes = span.attributes
        attributes[Attr.RPC_STATUS] = code.name
        if code is not grpc.StatusCode.OK:
            attributes[Attr.ERROR_TYPE] = code.name
            if code in _SERVER_ERRORS:
                span.set_status(StatusCode.ERROR, message)
        span.end()
        self._metrics.rpc_finished(method.name, method.by_code[code], time.perf_counter() - started)

    def _wrap_unary(
        self, behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], method: _Method
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            span, started = self._start(method, context)
            # A coroutine runs in one task from start to end, cancelled or not: set and reset
            # happen in the same Context.
            token = CURRENT_SPAN.set(span)
            code, message = grpc.StatusCode.OK, ""
            try:
                response = await behavior(request, context)
                code, message = _status_of(context)
                return response
            except asyncio.CancelledError:
                why = cancellation(context)
                code, message = why.code, why.message
                raise
            except BaseException as e:
                code, message = _status_of(context, e)
                raise
            finally:
                CURRENT_SPAN.reset(token)
                self._finish(method, span, started, code, message)

        return unary

    def _wrap_stream(
        self,
        behavior: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]],
        method: _Method,
    ) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            span, started = self._start(method, context)
            # The handler's own Context: a copy of the caller's with the span current. Nothing
            # is set in the caller's, so nothing is held across this generator's yields.
            handler_context = contextvars.copy_context()
            handler_context.run(CURRENT_SPAN.set, span)
            responses = behavior(request, context)
            code, message = grpc.StatusCode.OK, ""
            try:
                while True:
                    try:
                        item = await _RunIn(handler_context, responses.__anext__())
                    except StopAsyncIteration:
                        break
                    yield item
                code, message = _status_of(context)
            except (asyncio.CancelledError, GeneratorExit):
                why = cancellation(context)
                code, message = why.code, why.message
                raise
            except BaseException as e:
                code, message = _status_of(context, e)
                raise
            finally:
                try:
                    # Closed early (a cancel, from whichever task): the handler's cleanup, its
                    # GenAI span's end included, runs in its own Context, before ours ends.
                    await _RunIn(handler_context, responses.aclose())  # type: ignore[attr-defined]
                finally:
                    self._finish(method, span, started, code, message)

        return stream


_T = TypeVar("_T")


class _RunIn(Generic[_T]):
    """Await `awaitable` with every step of it run inside `context` (a `contextvars.Context`).

    What an asyncio Task does for its coroutine, without a task: each `send`/`throw` into the
    awaitable runs in `context`, so context variables it sets stay set for its next step and
    are reset in the Context they were set in, whichever task resumes or closes it.
    Cancellation is passed through. `context` must not be entered elsewhere meanwhile (one
    handler, one step at a time).
    """

    __slots__ = ("_awaitable", "_context")

    def __init__(self, context: contextvars.Context, awaitable: Awaitable[_T]) -> None:
        self._context = context
        self._awaitable = awaitable

    def __await__(self) -> Generator[Any, Any, _T]:
        steps = self._awaitable.__await__()
        run = self._context.run
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                if error is None:
                    signal = run(steps.send, value)
                else:
                    signal, error = run(steps.throw, error), None
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            try:
                value = yield signal
            except GeneratorExit:
                run(steps.close)  # type: ignore[attr-defined]
                raise
            except BaseException as e:  # cancellation, thrown in by the task
                value, error = None, e


def _status_of(
    context: grpc.aio.ServicerContext, error: BaseException | None = None
) -> tuple[grpc.StatusCode, str]:
    """The status the call ends with: what the servicer set or aborted with, else from `error`."""
    code = context.code()
    if isinstance(code, grpc.StatusCode) and (code is not grpc.StatusCode.OK or error is None):
        details = context.details()
        return code, details.decode() if isinstance(details, bytes) else (details or "")
    if error is None:
        return grpc.StatusCode.OK, ""
    return grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}"
