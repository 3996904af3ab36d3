"""The GenAI client span and metrics around one upstream call.

The servicer opens an `UpstreamCall` per provider call; it owns the CLIENT span
`chat {gen_ai.request.model}` (GenAI semantic conventions) and records duration, token usage,
time to first token, time per output token and cost when the call ends. Providers never touch
telemetry, and the span is current while they run so their HTTP requests carry `traceparent`.

Prompt and completion text go on spans only when the operator opts in
(`telemetry.record_content`), each attribute capped at `content_max_chars`:

- on the `chat` span, `gen_ai.input.messages` / `gen_ai.output.messages` as JSON strings that
  follow the GenAI conventions' JSON schemas: `[{"role", "parts": [{"type": "text",
  "content"}]}]`, each output message with its `finish_reason` (required by the schema, and
  without it LLM-observability tools drop the whole value). System messages are part of our
  chat history, so they stay in `gen_ai.input.messages` with role "system", as the
  conventions say for such APIs; `gen_ai.system_instructions` is for APIs that take them apart.
- on the RPC's SERVER span (the trace's root for most callers), what tools read for the trace's
  request/response preview: OpenInference's `openinference.span.kind` ("CHAIN": a step that
  wraps the LLM call), `input.value` (the request: route name and messages) and `output.value`
  (the answer as `Complete` returns it), both `application/json`. See docs/decisions.md.

A capped value stays valid JSON: texts are cut in order where the budget runs out, the cut one
ending with "…[truncated]", and the messages after it are left out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from gateway.chat import ChatMessage, ChatRequest
from gateway.config import RouteConfig, TelemetryConfig
from gateway.errors import GatewayError
from gateway.telemetry.catalog import Attr
from gateway.telemetry.labels import MetadataLabels
from gateway.telemetry.metrics import Attributes, GatewayMetrics
from gateway.telemetry.span_record import AnySpan, SpanRecord, SpanRecorder, current_span

__all__ = ["GenAITelemetry", "UpstreamCall"]


@dataclass(frozen=True, slots=True)
class _AttrSets:
    base: Attributes
    input: Attributes
    output: Attributes
    cost: Attributes


class GenAITelemetry:
    def __init__(
        self, spans: SpanRecorder, metrics: GatewayMetrics, config: TelemetryConfig
    ) -> None:
        self._spans = spans
        self._metrics = metrics
        self._record_content = config.record_content
        self._content_cap = config.content_max_chars
        self._labels = MetadataLabels(config.metadata_labels, config.metadata_label_max_values)
        # Metric attribute sets are few (routes × response models × outcomes × label values)
        # and rebuilding them per request costs more than the records themselves.
        self._attr_sets: dict[tuple[str, ...], _AttrSets] = {}

    @property
    def records_content(self) -> bool:
        return self._record_content

    def attr_sets(
        self,
        route: RouteConfig,
        provider: str,
        response_model: str,
        error_type: str,
        labels: tuple[tuple[str, str], ...],
    ) -> _AttrSets:
        key = (route.name, provider, response_model, error_type, *(v for _, v in labels))
        sets = self._attr_sets.get(key)
        if sets is None:
            base: dict[str, str | int | float | bool] = {
                Attr.OPERATION: "chat",
                Attr.PROVIDER: provider,
                Attr.REQUEST_MODEL: route.model,
                Attr.RESPONSE_MODEL: response_model,
                Attr.ROUTE: route.name,
            }
            if error_type:
                base[Attr.ERROR_TYPE] = error_type
            base.update(labels)
            sets = _AttrSets(
                base=base,
                input={**base, Attr.TOKEN_TYPE: "input"},
                output={**base, Attr.TOKEN_TYPE: "output"},
                cost={
                    Attr.PROVIDER: provider,
                    Attr.REQUEST_MODEL: route.model,
                    Attr.ROUTE: route.name,
                    **dict(labels),
                },
            )
            if len(self._attr_sets) < 10_000:
                self._attr_sets[key] = sets
        return sets

    def start(
        self,
        *,
        route: RouteConfig,
        provider: str,
        server_address: str | None,
        server_port: int | None,
        request: ChatRequest,
        metadata: Mapping[str, str],
        stream: bool,
    ) -> UpstreamCall:
        attributes: dict[str, str | int | float | bool | tuple[str, ...]] = {
            Attr.OPERATION: "chat",
            Attr.PROVIDER: provider,
            Attr.REQUEST_MODEL: request.model,
            Attr.ROUTE: route.name,
            "gen_ai.request.stream": stream,
        }
        if request.max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = request.max_tokens
        if request.temperature is not None:
            attributes["gen_ai.request.temperature"] = request.temperature
        if request.top_p is not None:
            attributes["gen_ai.request.top_p"] = request.top_p
        if request.stop:
            attributes["gen_ai.request.stop_sequences"] = request.stop
        if server_address:
            attributes[Attr.SERVER_ADDRESS] = server_address
        if server_port:
            attributes[Attr.SERVER_PORT] = server_port
        # The RPC's server span, current while the servicer starts the call.
        rpc_span = current_span()
        if self._record_content:
            attributes["gen_ai.input.messages"] = self.input_messages(request.messages)
            if rpc_span.is_recording():
                rpc_span.set_attributes(
                    {
                        "openinference.span.kind": "CHAIN",
                        "input.value": self.request_value(route.name, request.messages),
                        "input.mime_type": "application/json",
                    }
                )
        span = self._spans.start(
            f"chat {request.model}",
            SpanKind.CLIENT,
            attributes,  # type: ignore[arg-type]
            rpc_span,
        )
        labels = self._labels.labels(metadata) if self._labels.enabled else ()
        return UpstreamCall(self, span, rpc_span, route, provider, labels, stream)

    # Content, as JSON capped at content_max_chars. Public for the tests of their shapes.

    def input_messages(self, messages: Sequence[ChatMessage]) -> str:
        """`gen_ai.input.messages`."""
        return _fit(
            lambda texts: [
                {"role": m.role, "parts": [{"type": "text", "content": text}]}
                for m, text in zip(messages, texts, strict=False)
            ],
            [m.content for m in messages],
            self._content_cap,
        )

    def output_messages(self, content: str, finish_reason: str) -> str:
        """`gen_ai.output.messages`: one choice, the assistant's."""
        return _fit(
            lambda texts: [
                {
                    "role": "assistant",
                    "parts": [{"type": "text", "content": texts[0]}],
                    "finish_reason": finish_reason,
                }
            ],
            [content],
            self._content_cap,
        )

    def request_value(self, route: str, messages: Sequence[ChatMessage]) -> str:
        """OpenInference `input.value`: the request as the client sent it."""
        return _fit(
            lambda texts: {
                "model": route,
                "messages": [
                    {"role": m.role, "content": text}
                    for m, text in zip(messages, texts, strict=False)
                ],
            },
            [m.content for m in messages],
            self._content_cap,
        )

    def response_value(
        self,
        *,
        response_id: str,
        model: str,
        provider: str,
        content: str,
        finish_reason: str,
        input_tokens: int | None,
        output_tokens: int | None,
    ) -> str:
        """OpenInference `output.value`: the answer as `Complete` returns it (proto names)."""

        def shape(texts: list[str]) -> dict[str, object]:
            answer: dict[str, object] = {
                "id": response_id,
                "model": model,
                "provider": provider,
                "content": texts[0],
                "finish_reason": finish_reason,
            }
            if input_tokens is not None and output_tokens is not None:
                answer["usage"] = {"input_tokens": input_tokens, "output_tokens": output_tokens}
            return answer

        return _fit(shape, [content], self._content_cap)


TRUNCATED = "…[truncated]"


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def _keep(texts: Sequence[str], budget: int) -> list[str]:
    """The texts, in order, within `budget` characters: the one where it runs out is cut and
    marked, the ones after it left out."""
    kept: list[str] = []
    for text in texts:
        if len(text) > budget:
            kept.append(text[:budget] + TRUNCATED)
            break
        kept.append(text)
        budget -= len(text)
    return kept


def _fit(shape: Callable[[list[str]], object], texts: list[str], cap: int) -> str:
    """`shape(texts)` as JSON of at most `cap` characters, valid JSON however it is cut.

    Over the cap, the most text that fits is kept (see `_keep`). When not even an empty cut
    text fits (a cap smaller than the JSON around it), that is the answer, over the cap.
    """
    total = sum(map(len, texts))
    if total <= cap or total == 0:
        whole = _dumps(shape(texts))
        if len(whole) <= cap or total == 0:
            return whole
    # Every kept character costs at least one in the JSON, so no more than `cap` are kept;
    # below `total` the JSON grows with the budget, so the largest budget that fits is found
    # by bisection.
    low, high = 0, min(total - 1, cap)
    while low < high:
        middle = (low + high + 1) // 2
        if len(_dumps(shape(_keep(texts, middle)))) <= cap:
            low = middle
        else:
            high = middle - 1
    return _dumps(shape(_keep(texts, low)))


# Set beside every attach: resetting it succeeds only in the Context it was set in, which is how
# `UpstreamCall.active` tells "closed where it was opened" from "closed by another task".
_ATTACHED_HERE: ContextVar[bool] = ContextVar("aigw_genai_attached_here", default=False)


def _reset_if_here(token: Token[bool]) -> bool:
    try:
        _ATTACHED_HERE.reset(token)
    except ValueError:  # created in a different Context
        return False
    return True


class UpstreamCall:
    """One provider call: `with call.active():` around it, then exactly one of the endings."""

    __slots__ = (
        "_ended",
        "_first_chunk_at",
        "_labels",
        "_owner",
        "_provider",
        "_route",
        "_rpc_span",
        "_started",
        "_stream",
        "span",
    )

    def __init__(
        self,
        owner: GenAITelemetry,
        span: SpanRecord,
        rpc_span: AnySpan,
        route: RouteConfig,
        provider: str,
        labels: tuple[tuple[str, str], ...],
        stream: bool,
    ) -> None:
        self._owner = owner
        self.span = span
        self._rpc_span = rpc_span
        self._route = route
        self._provider = provider
        self._labels = labels
        self._stream = stream
        self._started = time.perf_counter()
        self._first_chunk_at: float | None = None
        self._ended = False

    @contextmanager
    def active(self) -> Iterator[None]:
        """The span is current inside (providers' requests carry its `traceparent`).

        Safe to hold across an async generator's `yield`: when a client's cancel leaves the
        generator parked there, the loop's finalizer closes it from another task, whose
        `contextvars.Context` is not the one the span was attached in. There `detach` would
        fail (OpenTelemetry logs an ERROR each time), and there is nothing of ours to undo: the
        context is restored only in the Context it was attached in.
        """
        token = otel_context.attach(trace.set_span_in_context(self.span.otel_span()))
        here = _ATTACHED_HERE.set(True)
        try:
            yield
        finally:
            if _reset_if_here(here):
                otel_context.detach(token)

    def first_chunk(self, response_model: str) -> None:
        """Call on the first content chunk of a stream."""
        if self._first_chunk_at is not None:
            return
        self._first_chunk_at = time.perf_counter()
        ttft = self._first_chunk_at - self._started
        self.span.set_attribute("gen_ai.response.time_to_first_chunk", ttft)
        sets = self._owner.attr_sets(self._route, self._provider, response_model, "", self._labels)
        self._owner._metrics.time_to_first_token(sets.base, ttft)

    def succeed(
        self,
        *,
        response_id: str,
        response_model: str,
        finish_reason: str,
        input_tokens: int | None,
        output_tokens: int | None,
        content: str | None = None,
    ) -> None:
        if self._ended:
            return
        self._ended = True
        elapsed = time.perf_counter() - self._started
        span = self.span
        span.set_attribute(Attr.RESPONSE_MODEL, response_model)
        if response_id:
            span.set_attribute("gen_ai.response.id", response_id)
        span.set_attribute("gen_ai.response.finish_reasons", (finish_reason,))
        owner = self._owner
        sets = owner.attr_sets(self._route, self._provider, response_model, "", self._labels)
        metrics = owner._metrics
        metrics.genai_finished(sets.base, elapsed)
        if input_tokens is not None and output_tokens is not None:
            span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
            metrics.tokens(sets.input, sets.output, input_tokens, output_tokens)
            route = self._route
            if route.priced:
                usd = (
                    (route.price_input_per_mtok or 0.0) * input_tokens
                    + (route.price_output_per_mtok or 0.0) * output_tokens
                ) / 1_000_000
                metrics.cost(sets.cost, usd)
            if self._stream and self._first_chunk_at is not None and output_tokens > 1:
                per_token = (time.perf_counter() - self._first_chunk_at) / (output_tokens - 1)
                metrics.time_per_output_token(sets.base, per_token)
        if content is not None and owner._record_content:
            span.set_attribute(
                "gen_ai.output.messages", owner.output_messages(content, finish_reason)
            )
            if self._rpc_span.is_recording():
                self._rpc_span.set_attributes(
                    {
                        "output.value": owner.response_value(
                            response_id=response_id,
                            model=response_model,
                            provider=self._provider,
                            content=content,
                            finish_reason=finish_reason,
                            input_tokens=input_tokens,
                            output_tokens=output_tokens,
                        ),
                        "output.mime_type": "application/json",
                    }
                )
        span.end()

    def fail(self, error: GatewayError | None, *, error_type: str = "", message: str = "") -> None:
        """End with an error: a GatewayError, or a bare error type such as "cancelled"."""
        if self._ended:
            return
        self._ended = True
        error_type = error.error_type if error is not None else error_type
        message = error.message if error is not None else message
        elapsed = time.perf_counter() - self._started
        self.span.set_attribute(Attr.ERROR_TYPE, error_type)
        self.span.set_status(StatusCode.ERROR, message)
        sets = self._owner.attr_sets(self._route, self._provider, "", error_type, self._labels)
        self._owner._metrics.genai_finished(sets.base, elapsed)
        self.span.end()
