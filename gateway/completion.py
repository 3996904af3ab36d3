"""The `aigw.v1.Completion` servicer: validate, route, call the provider, answer.

Every provider call runs inside an `UpstreamCall` (the GenAI client span and metrics); the
server span around the RPC comes from the interceptor, this module only adds the route and the
request's metadata tags to it. The upstream call's budget is the route's timeout, shortened to
the client's gRPC deadline when that is sooner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from aigw.v1 import completion_pb2, completion_pb2_grpc

from gateway.chat import ChatRequest
from gateway.config import RouteConfig
from gateway.errors import GatewayError, UpstreamTimeout, cancellation
from gateway.providers import Provider
from gateway.router import Router
from gateway.telemetry.catalog import Attr
from gateway.telemetry.genai import GenAITelemetry, UpstreamCall
from gateway.telemetry.span_record import current_span
from gateway.validation import validate_request

__all__ = ["CompletionServicer"]

_log = logging.getLogger(__name__)
_METADATA_ATTR = "aigw.metadata."


class CompletionServicer(completion_pb2_grpc.CompletionServicer):
    def __init__(self, router: Router, genai: GenAITelemetry) -> None:
        self._router = router
        self._genai = genai

    def _prepare(
        self, request: completion_pb2.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> tuple[RouteConfig, Provider, ChatRequest, float]:
        messages = validate_request(request)
        route, provider = self._router.resolve(request.model)
        span = current_span()
        if span.is_recording():
            span.set_attribute(Attr.ROUTE, route.name)
            for key, value in request.metadata.items():
                span.set_attribute(_METADATA_ATTR + key, value)
        chat = ChatRequest(
            model=route.model,
            messages=messages,
            max_tokens=request.max_tokens if request.HasField("max_tokens") else None,
            temperature=request.temperature if request.HasField("temperature") else None,
            top_p=request.top_p if request.HasField("top_p") else None,
            stop=tuple(request.stop),
        )
        budget = route.timeout_seconds
        remaining = context.time_remaining()
        if remaining is not None:
            if remaining <= 0:
                raise UpstreamTimeout(route.name, "the client's deadline passed before the call")
            budget = min(budget, remaining)
        return route, provider, chat, budget

    def _start(
        self,
        route: RouteConfig,
        provider: Provider,
        chat: ChatRequest,
        request: completion_pb2.CompleteRequest,
        stream: bool,
    ) -> UpstreamCall:
        return self._genai.start(
            route=route,
            provider=provider.name,
            server_address=provider.server_address,
            server_port=provider.server_port,
            request=chat,
            metadata=request.metadata,
            stream=stream,
        )

    async def Complete(
        self, request: completion_pb2.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> completion_pb2.CompleteResponse:
        try:
            route, provider, chat, budget = self._prepare(request, context)
        except GatewayError as e:
            await context.abort(e.code, e.message)
        call = self._start(route, provider, chat, request, stream=False)
        try:
            with call.active():
                result = await provider.complete(chat, timeout=budget)
        except GatewayError as e:
            call.fail(e)
            await context.abort(e.code, e.message)
        except asyncio.CancelledError:
            why = cancellation(context)
            call.fail(None, error_type=why.error_type, message=why.message)
            raise
        except Exception as e:
            call.fail(None, error_type=type(e).__qualname__, message="internal error")
            _log.exception("route %r: provider %s failed unexpectedly", route.name, provider.name)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the gateway log")
        call.succeed(
            response_id=result.id,
            response_model=result.model,
            finish_reason=result.finish_reason,
            input_tokens=result.input_tokens,
            output_tokens=result.output_tokens,
            content=result.content,
        )
        return completion_pb2.CompleteResponse(
            id=result.id,
            model=result.model,
            provider=provider.name,
            content=result.content,
            finish_reason=result.finish_reason,
            usage=completion_pb2.Usage(
                input_tokens=result.input_tokens, output_tokens=result.output_tokens
            ),
        )

    async def StreamComplete(
        self, request: completion_pb2.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[completion_pb2.CompleteChunk]:
        try:
            route, provider, chat, budget = self._prepare(request, context)
        except GatewayError as e:
            await context.abort(e.code, e.message)
        call = self._start(route, provider, chat, request, stream=True)
        parts: list[str] | None = [] if self._genai.records_content else None
        try:
            with call.active():
                # aclosing: an early exit (final chunk, cancel) closes the upstream response
                # now, not whenever the generator is garbage-collected.
                async with contextlib.aclosing(provider.stream(chat, timeout=budget)) as chunks:
                    async for chunk in chunks:
                        if chunk.is_final:
                            call.succeed(
                                response_id=chunk.id,
                                response_model=chunk.model,
                                finish_reason=chunk.finish_reason,
                                input_tokens=chunk.input_tokens,
                                output_tokens=chunk.output_tokens,
                                content="".join(parts) if parts is not None else None,
                            )
                            yield completion_pb2.CompleteChunk(
                                id=chunk.id,
                                model=chunk.model,
                                provider=provider.name,
                                finish_reason=chunk.finish_reason,
                                usage=completion_pb2.Usage(
                                    input_tokens=chunk.input_tokens or 0,
                                    output_tokens=chunk.output_tokens or 0,
                                ),
                            )
                            return
                        call.first_chunk(chunk.model)
                        if parts is not None:
                            parts.append(chunk.delta)
                        yield completion_pb2.CompleteChunk(
                            id=chunk.id,
                            model=chunk.model,
                            provider=provider.name,
                            delta=chunk.delta,
                        )
        except GatewayError as e:
            call.fail(e)
            await context.abort(e.code, e.message)
        except (asyncio.CancelledError, GeneratorExit):
            why = cancellation(context)
            call.fail(None, error_type=why.error_type, message=why.message)
            raise
        except Exception as e:
            call.fail(None, error_type=type(e).__qualname__, message="internal error")
            _log.exception("route %r: provider %s failed unexpectedly", route.name, provider.name)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the gateway log")
        call.fail(None, error_type="invalid_response", message="stream ended without a final chunk")
        await context.abort(grpc.StatusCode.UNAVAILABLE, "upstream stream ended early")
