"""OTLP/HTTP with the JSON Protobuf Encoding, for spans and metrics.

The released Python OTLP/HTTP exporter only sends binary protobuf, while some backends and
the proxies in front of them accept only JSON, so we encode OTLP/JSON ourselves.

What the spec requires (opentelemetry-proto ``docs/specification.md``, "JSON Protobuf
Encoding") is the proto3 JSON mapping *with deviations*, which is why
``json_format.MessageToJson`` cannot be used as-is:

* ``traceId``, ``spanId`` and ``parentSpanId`` — in spans, span links and metric exemplars
  alike — are hex strings (we emit lowercase). The proto3 mapping would base64 them, and a
  receiver reading base64 as hex either rejects the payload or, worse, stores garbage ids that
  never join up with the rest of the trace.
* Enum fields (``kind``, ``status.code``, ``aggregationTemporality``) MUST be integers;
  ``MessageToJson`` writes enum *names* unless told otherwise.
* Keys are lowerCamelCase; the original snake_case field names are invalid. (The proto3
  default already does this — ``preserving_proto_field_name`` must stay off.)
* 64-bit integers (all the ``*UnixNano`` times, ``intValue``, counts) are decimal strings,
  as in proto3 JSON; receivers accept numbers too, but strings are what the mapping mandates
  and they survive JavaScript-based receivers without losing precision.
* ``Content-Type: application/json``.

So we build the protobuf request with the SDK's own encoders (`encode_spans`,
`encode_metrics` — the same request the protobuf exporters send), convert it with
``MessageToDict(use_integers_for_enums=True)``, and rewrite exactly the id fields from base64
to hex. Default values are omitted, as the proto3 mapping does; OTLP receivers treat a missing
field as its default.

The exporters POST one request per `export()` call to a complete endpoint URL (nothing is
appended to it), retry 429/502/503/504 and connection-level failures with jittered exponential
backoff (``Retry-After`` seconds or HTTP-date take precedence) within a single time budget
(``max_attempts=1``: never retry), and record what happened in `last_outcome`, as
`export_outcome` translates it. Redirects are failures and never followed. They send whatever
the SDK hands them, even an empty batch — exactly like the official exporters — so
`last_outcome` always reflects a real round trip to the backend.

TLS is the SSLContext they are given (`export_tls.ssl_context`: the section's CA, client
certificate and minimum version, never SSL_CERT_FILE), and `server_name` overrides the name
the backend's certificate is verified for (httpcore's ``sni_hostname``).

They log nothing per export: failures are logged once per state change by whoever counts
them (`export_stats`), and httpx's own INFO line for each request our client makes is demoted
to DEBUG (other httpx clients in the process keep theirs).
"""

from __future__ import annotations

import base64
import contextvars
import functools
import gzip
import json
import logging
import math
import random
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Final, Literal, TypeVar

import httpx
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.metrics.view import Aggregation
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from gateway.telemetry.export_outcome import (
    ExportOutcome,
    demote_to_debug,
    endpoint_address,
    outcome_from_exception,
    outcome_from_response,
    partial_success,
)

__all__ = [
    "Compression",
    "OTLPJsonMetricExporter",
    "OTLPJsonSpanExporter",
    "encode_metrics_json",
    "encode_spans_json",
    "message_to_otlp_json_dict",
]

_logger = logging.getLogger(__name__)

Compression = Literal["none", "gzip"]
_T = TypeVar("_T")

# The bytes fields the spec encodes as hex. Matched by proto field name so that every message
# carrying them (Span, Span.Link, Exemplar, LogRecord, ...) is covered without a list of paths;
# every other bytes field (e.g. AnyValue.bytesValue) stays base64 as the proto3 mapping says.
_HEX_ID_FIELDS: Final[frozenset[str]] = frozenset({"trace_id", "span_id", "parent_span_id"})

_RETRYABLE_STATUSES: Final[frozenset[int]] = frozenset({429, 502, 503, 504})
_INITIAL_BACKOFF_S: Final[float] = 0.5
_MAX_BACKOFF_S: Final[float] = 16.0
_JITTER: Final[float] = 0.2
# Headers the exporter owns: a user-supplied value would make the body lie about its encoding.
_OWNED_HEADERS: Final[frozenset[str]] = frozenset({"content-type", "content-encoding"})
_USER_AGENT: Final[str] = "aigw-otlp-json"

# Set while our client sends, so httpx's per-request INFO line is demoted for our requests only.
_OUR_REQUEST: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "aigw_otlp_json_request", default=False
)
demote_to_debug("httpx", when=lambda record: _OUR_REQUEST.get())


# --- encoding ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _HexPlan:
    """Where, below one message type, hex id fields can occur."""

    id_fields: frozenset[str]  # json names of id fields directly in this message
    children: tuple[tuple[str, Descriptor], ...]  # message fields that lead to more id fields


@functools.cache
def _hex_plan(descriptor: Descriptor) -> _HexPlan | None:
    """The id-bearing part of `descriptor`, or None if no id field can occur below it.

    Cached per message type so the rewrite never descends into attribute trees (AnyValue is
    recursive and by far the bulk of a payload) that cannot contain ids.
    """
    id_fields = frozenset(
        f.json_name
        for f in descriptor.fields
        if f.type == FieldDescriptor.TYPE_BYTES and f.name in _HEX_ID_FIELDS
    )
    children = tuple(
        (f.json_name, f.message_type)
        for f in descriptor.fields
        if f.type == FieldDescriptor.TYPE_MESSAGE and _has_ids(f.message_type, frozenset())
    )
    return _HexPlan(id_fields, children) if id_fields or children else None


def _has_ids(descriptor: Descriptor, visiting: frozenset[str]) -> bool:
    if descriptor.full_name in visiting:
        return False  # a recursive type: its ids, if any, are found on the first visit
    visiting = visiting | {descriptor.full_name}
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_BYTES and field.name in _HEX_ID_FIELDS:
            return True
        if field.type == FieldDescriptor.TYPE_MESSAGE and _has_ids(field.message_type, visiting):
            return True
    return False


def _rewrite_ids(node: dict[str, Any], descriptor: Descriptor) -> None:
    plan = _hex_plan(descriptor)
    if plan is None:
        return
    for key in plan.id_fields & node.keys():
        node[key] = base64.b64decode(node[key]).hex()
    for key, child in plan.children:
        value = node.get(key)
        if isinstance(value, list):
            for item in value:
                _rewrite_ids(item, child)
        elif isinstance(value, dict):
            _rewrite_ids(value, child)


def message_to_otlp_json_dict(message: Message) -> dict[str, Any]:
    """Any OTLP protobuf message as a spec-conformant OTLP/JSON object."""
    result = json_format.MessageToDict(message, use_integers_for_enums=True)
    _rewrite_ids(result, message.DESCRIPTOR)
    return result


def _dumps(obj: dict[str, Any]) -> bytes:
    # allow_nan=False: MessageToDict already renders NaN/Infinity as the strings the proto3
    # mapping requires, so a bare float NaN here would be a bug producing invalid JSON.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def encode_spans_json(spans: Sequence[ReadableSpan]) -> bytes:
    """An OTLP/JSON ExportTraceServiceRequest for `spans`, compact UTF-8."""
    return _dumps(message_to_otlp_json_dict(encode_spans(spans)))


def encode_metrics_json(data: MetricsData) -> bytes:
    """An OTLP/JSON ExportMetricsServiceRequest for `data`, compact UTF-8."""
    return _dumps(message_to_otlp_json_dict(encode_metrics(data)))


# --- transport -----------------------------------------------------------------------------


class _ShutDownError(Exception):
    """Raised instead of starting an HTTP attempt once shutdown() was called."""


_SHUT_DOWN: Final[ExportOutcome] = ExportOutcome(
    success=False, reason="unknown", message="exporter is shut down"
)


def _safe_endpoint(url: httpx.URL) -> str:
    """The endpoint as it may appear in logs: no userinfo, no query (both can hold tokens)."""
    return str(url.copy_with(username=None, password=None, query=None, fragment=None))


def _retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(moment.timestamp() - time.time(), 0.0)
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _backoff(attempt: int) -> float:
    base = min(_INITIAL_BACKOFF_S * 2**attempt, _MAX_BACKOFF_S)
    return base * random.uniform(1 - _JITTER, 1 + _JITTER)


class _JsonPoster:
    """POSTs OTLP/JSON bodies to one endpoint with retries inside a time budget."""

    def __init__(
        self,
        *,
        signal: str,
        endpoint: str,
        headers: Mapping[str, str],
        timeout: float,
        compression: Compression,
        max_attempts: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_name: str = "",
        secrets: tuple[str, ...] = (),
    ) -> None:
        url = httpx.URL(endpoint)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("endpoint must be an absolute http:// or https:// URL")
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if compression not in ("none", "gzip"):
            raise ValueError(f"compression must be 'none' or 'gzip', got {compression!r}")
        if max_attempts is not None and max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts!r}")
        self._max_attempts = max_attempts
        self._signal = signal
        self._url = url
        self._safe_endpoint = _safe_endpoint(url)
        self._address = endpoint_address(str(url))
        self._timeout = float(timeout)
        self._compression: Compression = compression
        sent = {k: v for k, v in headers.items() if k.lower() not in _OWNED_HEADERS}
        if not any(k.lower() == "user-agent" for k in sent):
            sent["User-Agent"] = _USER_AGENT
        sent["Content-Type"] = "application/json"
        if compression == "gzip":
            sent["Content-Encoding"] = "gzip"
        self._headers = sent
        # Every value we put on the wire, for redaction: a URL's userinfo becomes an
        # Authorization header, so its parts count too.
        self._secrets: tuple[str, ...] = (
            *headers.values(),
            *(p for p in (url.username, url.password) if p),
            *secrets,
        )
        self._extensions = {"sni_hostname": server_name} if server_name else None
        self._shutdown = threading.Event()
        # The client is closed by whoever is last: shutdown() when idle, otherwise the attempt
        # in flight when it ends — closing under a live request would turn its real answer
        # (which `last_outcome` should report) into a spurious transport error.
        self._lock = threading.Lock()
        self._in_flight = 0
        self._closed = False
        # Redirects are never followed: a redirect would re-send our headers (credentials)
        # to wherever the backend points, and a telemetry endpoint has no business redirecting.
        # An SSLContext given is used as is: httpx then reads no SSL_CERT_FILE / SSL_CERT_DIR.
        self._client = httpx.Client(
            follow_redirects=False, verify=ssl_context if ssl_context is not None else True
        )

    @property
    def is_shutdown(self) -> bool:
        return self._shutdown.is_set()

    def post(self, body: bytes, budget: float | None = None) -> ExportOutcome:
        limit = self._timeout if budget is None else max(min(self._timeout, budget), 0.0)
        deadline = time.monotonic() + limit
        if self._compression == "gzip":
            body = gzip.compress(body)
        attempt = 0
        outcome = ExportOutcome(success=False, reason="timeout", message="no time budget left")
        while (remaining := deadline - time.monotonic()) > 0:
            retry_after: float | None = None
            try:
                response = self._attempt(body, remaining)
            except _ShutDownError:
                outcome = _SHUT_DOWN
                break
            except httpx.TimeoutException as exc:
                # The attempt was given the whole remaining budget, so it is now spent.
                outcome = self._failure(exc)
                break
            except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                # Refused, reset, or dropped without a response: the spec says retry. A TLS
                # failure will not heal by itself within the budget.
                outcome = self._failure(exc)
                if outcome.reason == "tls":
                    break
            except httpx.HTTPError as exc:
                outcome = self._failure(exc)
                break
            else:
                outcome = outcome_from_response(response, secrets=self._secrets)
                if outcome.success:
                    return self._success(response)
                if response.status_code not in _RETRYABLE_STATUSES:
                    break
                retry_after = _retry_after_seconds(response)
            if self._max_attempts is not None and attempt + 1 >= self._max_attempts:
                break
            delay = _backoff(attempt) if retry_after is None else retry_after
            if delay >= deadline - time.monotonic():
                break  # waiting would outlive the budget; report the failure we have
            if self._shutdown.wait(delay):
                break
            attempt += 1
        _logger.debug(
            "OTLP/JSON %s export to %s failed after %d attempt(s): %s: %s",
            self._signal,
            self._safe_endpoint,
            attempt + 1,
            outcome.reason,
            outcome.message,
        )
        return outcome

    def _failure(self, exc: BaseException) -> ExportOutcome:
        return outcome_from_exception(exc, address=self._address, secrets=self._secrets)

    def _attempt(self, body: bytes, timeout: float) -> httpx.Response:
        with self._lock:
            if self._shutdown.is_set():
                raise _ShutDownError
            self._in_flight += 1
        try:
            # One timeout value for connect, write, read and pool wait: each phase may use
            # what is left of the budget. (httpx has no total-request deadline; a server that
            # trickles bytes could stretch an attempt, which OTLP backends do not do.)
            token = _OUR_REQUEST.set(True)
            try:
                return self._client.post(
                    self._url,
                    content=body,
                    headers=self._headers,
                    timeout=timeout,
                    extensions=self._extensions,
                )
            finally:
                _OUR_REQUEST.reset(token)
        finally:
            with self._lock:
                self._in_flight -= 1
                self._close_if_done()

    def _close_if_done(self) -> None:
        # Called with self._lock held.
        if self._shutdown.is_set() and self._in_flight == 0 and not self._closed:
            self._closed = True
            self._client.close()

    def _success(self, response: httpx.Response) -> ExportOutcome:
        """A 2xx; a partial success (data rejected despite the 200) goes into the message.

        The spec forbids retrying a partial success, so it stays a success; but "200, and
        40% of your spans were dropped" is exactly what an endpoint test should show. The
        body of a plain success ("{}") is not a message.
        """
        plain = ExportOutcome(success=True, http_status=response.status_code)
        try:
            payload = response.json()
        except ValueError:
            return plain
        partial = payload.get("partialSuccess") if isinstance(payload, dict) else None
        if not isinstance(partial, dict):
            return plain
        rejected = next((v for k, v in partial.items() if k.startswith("rejected")), 0)
        text = partial.get("errorMessage", "")
        if not rejected and not text:
            return plain
        return partial_success(response.status_code, rejected, str(text), secrets=self._secrets)

    def shutdown(self) -> None:
        with self._lock:
            if self._shutdown.is_set():
                return
            self._shutdown.set()  # wakes a retry wait at once
            self._close_if_done()


def _budget_from_millis(timeout_millis: float | None) -> float | None:
    if timeout_millis is None:
        return None
    return timeout_millis / 1000.0


class OTLPJsonSpanExporter(SpanExporter):
    """Exports spans as OTLP/JSON over HTTP to `endpoint` (the full URL, e.g. …/v1/traces).

    `timeout` is the whole budget of one `export()`, retries and backoff included;
    `max_attempts` caps the attempts within it (None: as many as the budget allows).
    """

    def __init__(
        self,
        *,
        endpoint: str,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        compression: Compression = "none",
        max_attempts: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_name: str = "",
        secrets: tuple[str, ...] = (),
    ) -> None:
        self._poster = _JsonPoster(
            signal="traces",
            endpoint=endpoint,
            headers=headers or {},
            timeout=timeout,
            compression=compression,
            max_attempts=max_attempts,
            ssl_context=ssl_context,
            server_name=server_name,
            secrets=secrets,
        )
        self.last_outcome: ExportOutcome | None = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.last_outcome = outcome = _export(self._poster, encode_spans_json, spans, None)
        return SpanExportResult.SUCCESS if outcome.success else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._poster.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # nothing is buffered here; the span processor owns the queue


class OTLPJsonMetricExporter(MetricExporter):
    """Exports metrics as OTLP/JSON over HTTP to `endpoint` (the full URL, e.g. …/v1/metrics).

    `preferred_temporality` / `preferred_aggregation` work as in the official exporter:
    instrument classes left out keep the SDK default (cumulative). `timeout` is the whole
    budget of one `export()`; a smaller `timeout_millis` from the metric reader wins.
    """

    def __init__(
        self,
        *,
        endpoint: str,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        compression: Compression = "none",
        preferred_temporality: dict[type, AggregationTemporality] | None = None,
        preferred_aggregation: dict[type, Aggregation] | None = None,
        max_attempts: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_name: str = "",
        secrets: tuple[str, ...] = (),
    ) -> None:
        super().__init__(
            preferred_temporality=preferred_temporality,
            preferred_aggregation=preferred_aggregation,
        )
        self._poster = _JsonPoster(
            signal="metrics",
            endpoint=endpoint,
            headers=headers or {},
            timeout=timeout,
            compression=compression,
            max_attempts=max_attempts,
            ssl_context=ssl_context,
            server_name=server_name,
            secrets=secrets,
        )
        self.last_outcome: ExportOutcome | None = None

    def export(
        self,
        metrics_data: MetricsData,
        timeout_millis: float | None = None,
        **kwargs: Any,
    ) -> MetricExportResult:
        budget = _budget_from_millis(timeout_millis)
        self.last_outcome = outcome = _export(
            self._poster, encode_metrics_json, metrics_data, budget
        )
        return MetricExportResult.SUCCESS if outcome.success else MetricExportResult.FAILURE

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._poster.shutdown()

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True


def _export(
    poster: _JsonPoster,
    encode: Callable[[_T], bytes],
    data: _T,
    budget: float | None,
) -> ExportOutcome:
    if poster.is_shutdown:
        # Checked before encoding: after shutdown nothing touches the network or the CPU.
        return _SHUT_DOWN
    try:
        body = encode(data)
    except Exception as exc:  # an SDK/encoder bug must fail this batch, not the worker thread
        _logger.exception("OTLP/JSON encoding failed")
        return ExportOutcome(
            success=False, reason="unknown", message=f"encoding failed: {type(exc).__name__}"
        )
    return poster.post(body, budget)
