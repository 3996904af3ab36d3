"""Real OTLP receivers for tests: a gRPC one and an HTTP (protobuf + JSON) one.

Both run in their own threads on 127.0.0.1 with an ephemeral port, so sync and async tests use
them the same way, and both record every request fully decoded into its protobuf
``Export*ServiceRequest`` so tests assert on data, not bytes.

    with HttpOtlpReceiver() as rx:                 # or GrpcOtlpReceiver()
        exporter = OTLPJsonSpanExporter(endpoint=rx.traces_url)
        ...
        assert sorted(rx.spans()) == sorted(expected)   # every span exactly once

Modes (both receivers): ``respond_ok()`` (the default), a failure (``respond_with(status,
body)`` for HTTP, ``fail_with(code, details)`` for gRPC), and ``black_hole()`` (take the
request, never answer until ``stop()``). Each mode setter takes ``times=N`` to apply to the
next N requests only and then fall back to the standing mode — "503 once, then 200" is
``rx.respond_with(503, times=1)``. ``respond_ok(delay=s)`` is a slow backend: it holds each
request `s` seconds before it accepts it (``requests`` shows it only once answered).
``refusing_endpoint()`` / ``closed_port_url()`` give a URL where connections are refused;
``port=N`` makes either receiver listen on a given port (a backend coming back where it was).

Accessors (both): ``requests`` (every record, in arrival order, with what was answered),
``wait_for_requests(n, timeout)``, ``spans()`` → [(trace id hex, span id hex, name)],
``metric_points()`` → {metric name: [data point]}, ``trace_requests()`` /
``metric_requests()`` (decoded, acknowledged), ``clear()``, ``in_flight`` (requests taken
and not yet answered, right now) and ``errors`` (handler tracebacks: leaving the ``with``
block fails the test if there are any, unless the block is already raising). HTTP only:
``violations``. Addresses: ``endpoint`` ("http://127.0.0.1:PORT"), plus ``traces_url`` /
``metrics_url`` / ``url(path)`` for HTTP and ``address`` ("127.0.0.1:PORT", for grpc
channels) for gRPC.

The HTTP receiver is also the test oracle for our OTLP/JSON: it checks every JSON body against
the spec's JSON Protobuf Encoding rules (``check_otlp_json``) *independently* of the
gateway's encoder, answers 400 and records the violations if any rule is broken, and only then
converts hex ids back and parses the dict into the protobuf request. It is stricter than the
spec in one place, on purpose: ids must be *lowercase* hex (the spec lets receivers accept any
case; what we emit, and what the Collector emits, is lowercase).

Only ``spans()`` / ``metric_points()`` count requests the receiver acknowledged (200 / OK):
a request answered 503 and then retried must not show up twice.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import sys
import threading
import traceback
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, Literal, TypeVar
from urllib.parse import urlsplit

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

__all__ = [
    "ExportRequest",
    "GrpcOtlpReceiver",
    "GrpcRequestRecord",
    "HttpOtlpReceiver",
    "HttpReply",
    "HttpRequestRecord",
    "ServerTls",
    "Signal",
    "SpanKey",
    "TlsGrpcOtlpReceiver",
    "TlsHttpOtlpReceiver",
    "check_otlp_json",
    "closed_port_url",
    "data_points_by_metric",
    "decode_otlp_json",
    "flatten_spans",
    "otlp_json_to_proto",
    "refusing_endpoint",
    "untrusted_tls_endpoint",
]

Signal = Literal["traces", "metrics"]
ExportRequest = (
    trace_service_pb2.ExportTraceServiceRequest | metrics_service_pb2.ExportMetricsServiceRequest
)
SpanKey = tuple[str, str, str]
"""(trace id hex, span id hex, span name) — one span, as tests compare them."""

_REQUEST_TYPES: Final[dict[Signal, type[ExportRequest]]] = {
    "traces": trace_service_pb2.ExportTraceServiceRequest,
    "metrics": metrics_service_pb2.ExportMetricsServiceRequest,
}
_RESPONSE_TYPES: Final[dict[Signal, type[Message]]] = {
    "traces": trace_service_pb2.ExportTraceServiceResponse,
    "metrics": metrics_service_pb2.ExportMetricsServiceResponse,
}
# The spec's recommended server-side limit, after decompression.
_MAX_BODY: Final[int] = 20 * 1024 * 1024
_STOP_JOIN_S: Final[float] = 5.0

_M = TypeVar("_M", bound=Message)


# --- decoding helpers ----------------------------------------------------------------------


def flatten_spans(requests: Iterable[trace_service_pb2.ExportTraceServiceRequest]) -> list[SpanKey]:
    """Every span in `requests`, in arrival order."""
    return [
        (span.trace_id.hex(), span.span_id.hex(), span.name)
        for request in requests
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]


def data_points_by_metric(
    requests: Iterable[metrics_service_pb2.ExportMetricsServiceRequest],
) -> dict[str, list[Message]]:
    """Every data point in `requests`, grouped by metric name, in arrival order."""
    points: dict[str, list[Message]] = {}
    for request in requests:
        for resource_metrics in request.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data")
                    bucket = points.setdefault(metric.name, [])
                    if kind is not None:
                        bucket.extend(getattr(metric, kind).data_points)
    return points


# --- the OTLP/JSON oracle -------------------------------------------------------------------

_ID_HEX_LEN: Final[dict[str, int]] = {"trace_id": 32, "span_id": 16, "parent_span_id": 16}
# Where an *empty* id is legitimate: a root span has no parent, and exemplars / log records
# need not be tied to a span. Everywhere else an id is required.
_OPTIONAL_IDS: Final[frozenset[tuple[str, str]]] = frozenset(
    {
        ("opentelemetry.proto.trace.v1.Span", "parent_span_id"),
        ("opentelemetry.proto.metrics.v1.Exemplar", "trace_id"),
        ("opentelemetry.proto.metrics.v1.Exemplar", "span_id"),
        ("opentelemetry.proto.logs.v1.LogRecord", "trace_id"),
        ("opentelemetry.proto.logs.v1.LogRecord", "span_id"),
    }
)
_LOWER_HEX: Final[re.Pattern[str]] = re.compile(r"[0-9a-f]*")


def _is_id_field(field_desc: FieldDescriptor) -> bool:
    return field_desc.type == FieldDescriptor.TYPE_BYTES and field_desc.name in _ID_HEX_LEN


def _check_id(value: Any, owner: Descriptor, field_desc: FieldDescriptor, path: str) -> str | None:
    if not isinstance(value, str):
        return f"{path}: id must be a hex string, got {type(value).__name__}"
    if value == "" and (owner.full_name, field_desc.name) in _OPTIONAL_IDS:
        return None
    want = _ID_HEX_LEN[field_desc.name]
    if len(value) != want or not _LOWER_HEX.fullmatch(value):
        return f"{path}: id must be {want} lowercase hex chars, got {value!r}"
    if value.strip("0") == "":
        return f"{path}: all-zero id is invalid"
    return None


def _check_node(node: Any, desc: Descriptor, path: str, out: list[str]) -> None:
    if not isinstance(node, dict):
        out.append(f"{path}: expected a JSON object for {desc.name}, got {type(node).__name__}")
        return
    by_json_name = {f.json_name: f for f in desc.fields}
    for key, value in node.items():
        where = f"{path}.{key}"
        if "_" in key:
            # No OTLP field's lowerCamelCase name contains "_", and OTLP has no map fields, so
            # any underscore is a snake_case (original proto) name — invalid per the spec.
            out.append(f"{where}: snake_case key; the spec requires lowerCamelCase")
            continue
        field_desc = by_json_name.get(key)
        if field_desc is None or value is None:
            continue  # the spec: receivers MUST ignore unknown fields; null means default
        repeated = field_desc.is_repeated
        if repeated and not isinstance(value, list):
            out.append(f"{where}: repeated field must be a JSON array")
            continue
        for index, item in enumerate(value if repeated else [value]):
            item_path = f"{where}[{index}]" if repeated else where
            if field_desc.type == FieldDescriptor.TYPE_MESSAGE:
                _check_node(item, field_desc.message_type, item_path, out)
            elif field_desc.type == FieldDescriptor.TYPE_ENUM:
                if isinstance(item, bool) or not isinstance(item, int):
                    out.append(f"{item_path}: enum must be an integer, got {item!r}")
            elif _is_id_field(field_desc) and (
                problem := _check_id(item, desc, field_desc, item_path)
            ):
                out.append(problem)


def check_otlp_json(obj: Any, request_type: type[Message]) -> list[str]:
    """Spec violations in an OTLP/JSON payload (empty list: conformant)."""
    violations: list[str] = []
    _check_node(obj, request_type.DESCRIPTOR, "$", violations)
    return violations


def _hex_ids_to_base64(node: Any, desc: Descriptor) -> Any:
    if not isinstance(node, dict):
        return node
    by_json_name = {f.json_name: f for f in desc.fields}
    result: dict[str, Any] = {}
    for key, value in node.items():
        field_desc = by_json_name.get(key)
        if field_desc is None or value is None:
            result[key] = value
        elif _is_id_field(field_desc):
            result[key] = base64.b64encode(bytes.fromhex(value)).decode("ascii")
        elif field_desc.type == FieldDescriptor.TYPE_MESSAGE:
            child = field_desc.message_type
            result[key] = (
                [_hex_ids_to_base64(v, child) for v in value]
                if isinstance(value, list)
                else _hex_ids_to_base64(value, child)
            )
        else:
            result[key] = value
    return result


def otlp_json_to_proto(obj: Any, request_type: type[_M]) -> _M:
    """Parse an already-checked OTLP/JSON object into `request_type` (hex ids → bytes)."""
    message = request_type()
    json_format.ParseDict(
        _hex_ids_to_base64(obj, message.DESCRIPTOR), message, ignore_unknown_fields=True
    )
    return message


def decode_otlp_json(body: bytes, signal: Signal) -> tuple[ExportRequest | None, Any, list[str]]:
    """(decoded request or None, parsed JSON or None, spec violations) for a JSON body."""
    request_type = _REQUEST_TYPES[signal]
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return None, None, [f"body is not valid UTF-8 JSON: {exc}"]
    violations = check_otlp_json(obj, request_type)
    if violations:
        return None, obj, violations
    try:
        return otlp_json_to_proto(obj, request_type), obj, []
    except (json_format.ParseError, ValueError, TypeError) as exc:
        return None, obj, [f"not a valid {request_type.__name__}: {exc}"]


# --- modes shared by both receivers ---------------------------------------------------------


@dataclass(frozen=True)
class _Ok:
    delay: float = 0.0  # seconds to hold the request before accepting it: a slow backend


@dataclass(frozen=True)
class _BlackHole:
    pass


@dataclass(frozen=True)
class HttpReply:
    """A scripted HTTP answer."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class _GrpcFailure:
    code: grpc.StatusCode
    details: str


class _Modes:
    """A standing mode plus a queue of one-shot modes consumed first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._standing: object = _Ok()
        self._queue: deque[object] = deque()

    def set(self, mode: object, times: int | None) -> None:
        with self._lock:
            if times is None:
                self._standing = mode
                self._queue.clear()
            else:
                if times < 1:
                    raise ValueError("times must be >= 1")
                self._queue.extend([mode] * times)

    def next(self) -> object:
        with self._lock:
            return self._queue.popleft() if self._queue else self._standing


class _Records:
    """Thread-safe request log with waiting."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: list[Any] = []

    def add(self, item: Any) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    def snapshot(self) -> list[Any]:
        with self._cond:
            return list(self._items)

    def clear(self) -> None:
        with self._cond:
            self._items.clear()

    def wait_for(self, count: int, timeout: float) -> list[Any]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._items) >= count, timeout):
                raise AssertionError(
                    f"receiver got {len(self._items)} request(s), expected at least {count} "
                    f"within {timeout}s"
                )
            return list(self._items)


class _InFlight:
    """How many requests a receiver is handling right now (taken, not yet answered)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._n = 0

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        with self._lock:
            self._n += 1
        try:
            yield
        finally:
            with self._lock:
                self._n -= 1

    @property
    def count(self) -> int:
        with self._lock:
            return self._n


def _fail_on_handler_errors(name: str, errors: list[str], exc_type: object) -> None:
    """On leaving a receiver's ``with`` block: its handlers must not have raised."""
    if errors and exc_type is None:
        raise AssertionError(f"{name} handler error(s):\n" + "\n".join(errors))


# --- refused connections --------------------------------------------------------------------


@contextlib.contextmanager
def refusing_endpoint(path: str = "/v1/traces") -> Iterator[str]:
    """A URL whose port refuses connections for as long as the context is open.

    The port stays *bound but not listening*: Linux answers a SYN to it with RST (connection
    refused), and nobody else can take the port meanwhile, unlike a port we merely closed.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}{path}"


def closed_port_url(path: str = "/v1/traces") -> str:
    """A URL on a port that was free a moment ago (prefer `refusing_endpoint` if you can)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


# --- HTTP -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpRequestRecord:
    """One request as the HTTP receiver saw it.

    `status` is what the receiver answered (None: black-holed, never answered). `body` is the
    body after Content-Encoding was undone; `json` the parsed JSON for JSON bodies.
    """

    path: str
    signal: Signal | None
    headers: dict[str, str]
    content_type: str
    content_encoding: str
    body: bytes
    request: ExportRequest | None
    json: Any
    violations: tuple[str, ...]
    status: int | None


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _gunzip(data: bytes) -> bytes:
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    out = inflater.decompress(data, _MAX_BODY + 1)
    if len(out) > _MAX_BODY:
        raise ValueError("decompressed body exceeds 20 MiB")
    if not inflater.eof:
        raise ValueError("truncated gzip stream")
    return out


class _HttpServer(ThreadingHTTPServer):
    # Non-daemon handler threads, so server_close() joins them: stop() really is clean.
    daemon_threads = False
    block_on_close = True

    def __init__(self, receiver: HttpOtlpReceiver, port: int = 0) -> None:
        self.receiver = receiver
        self.connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _HttpHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Tracked here, on the accept thread, rather than in the handler: after shutdown()
        # returns no connection can exist that stop() does not know about.
        with self._conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up before reading its answer (an exporter shut down or timed
        # out mid-export) is the client's business, counted apart; anything else is ours.
        if isinstance(sys.exc_info()[1], BrokenPipeError | ConnectionResetError):
            self.receiver.hung_up += 1
            return
        self.receiver.errors.append(traceback.format_exc())

    def unblock_connections(self) -> None:
        with self._conn_lock:
            conns = list(self.connections)
        for conn in conns:
            # Idle keep-alive readers sit in recv(); shutdown (not close) wakes them with EOF.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _HttpHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # safety net only: stop() wakes idle connections itself
    server: _HttpServer

    def do_POST(self) -> None:
        self.server.receiver._handle_post(self)

    def _not_allowed(self) -> None:
        self.send_response(405)
        self.send_header("Content-Length", "0")
        self.send_header("Allow", "POST")
        self.end_headers()

    do_GET = do_PUT = do_DELETE = do_PATCH = _not_allowed

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean; everything worth seeing is in the records


class HttpOtlpReceiver:
    """An OTLP/HTTP receiver on 127.0.0.1 (protobuf and JSON, optional gzip).

    Accepts POST to any path ending in ``/v1/traces`` or ``/v1/metrics`` (so path prefixes such
    as ``/otlp/v1/traces`` work). See the module docstring for modes and accessors.
    """

    def __init__(self, *, port: int = 0) -> None:
        """`port`: 0 for an ephemeral one, or a given port (a backend that comes back there)."""
        self._requested_port = port
        self._server: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._modes = _Modes()
        self._records = _Records()
        self._in_flight = _InFlight()
        self.errors: list[str] = []
        self.hung_up = 0
        """Tracebacks of exceptions inside request handling; leaving ``with`` asserts none."""

    # lifecycle

    def start(self) -> HttpOtlpReceiver:
        if self._server is not None:
            raise RuntimeError("already started")
        self._server = _HttpServer(self, self._requested_port)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="http-otlp-receiver",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or self._stopping.is_set():
            return
        self._stopping.set()  # releases black-holed handlers
        server.shutdown()  # no more accepts after this returns
        server.unblock_connections()
        server.server_close()  # joins every handler thread
        if thread is not None:
            thread.join(_STOP_JOIN_S)

    def __enter__(self) -> HttpOtlpReceiver:
        return self.start()

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        self.stop()
        _fail_on_handler_errors("HTTP OTLP receiver", self.errors, exc_type)

    # addresses

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("receiver not started")
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        """Base URL, e.g. "http://127.0.0.1:4318" — append the signal path yourself."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def traces_url(self) -> str:
        return f"{self.endpoint}/v1/traces"

    @property
    def metrics_url(self) -> str:
        return f"{self.endpoint}/v1/metrics"

    def url(self, path: str) -> str:
        return f"{self.endpoint}/{path.lstrip('/')}"

    # modes

    def respond_ok(self, *, delay: float = 0.0, times: int | None = None) -> None:
        """Accept and answer 200 with an empty Export*ServiceResponse (the default); with
        `delay`, only after holding the request that long (a slow backend)."""
        self._modes.set(_Ok(delay), times)

    def respond_with(
        self,
        status: int,
        body: bytes | str = b"",
        *,
        headers: Mapping[str, str] | None = None,
        content_type: str = "text/plain; charset=utf-8",
        times: int | None = None,
    ) -> None:
        """Answer `status` with `body` (and extra `headers`, e.g. Retry-After)."""
        raw = body.encode() if isinstance(body, str) else body
        self._modes.set(HttpReply(status, raw, dict(headers or {}), content_type), times)

    def black_hole(self, *, times: int | None = None) -> None:
        """Read the request, then never answer (until stop(), which drops the connection)."""
        self._modes.set(_BlackHole(), times)

    # accessors

    @property
    def requests(self) -> list[HttpRequestRecord]:
        return self._records.snapshot()

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[HttpRequestRecord]:
        """Block until at least `count` requests were recorded (AssertionError on timeout)."""
        return self._records.wait_for(count, timeout)

    def clear(self) -> None:
        self._records.clear()

    def trace_requests(self) -> list[trace_service_pb2.ExportTraceServiceRequest]:
        """Decoded trace requests that were answered 200."""
        return [
            r.request
            for r in self.requests
            if r.status == 200
            and isinstance(r.request, trace_service_pb2.ExportTraceServiceRequest)
        ]

    def metric_requests(self) -> list[metrics_service_pb2.ExportMetricsServiceRequest]:
        """Decoded metric requests that were answered 200."""
        return [
            r.request
            for r in self.requests
            if r.status == 200
            and isinstance(r.request, metrics_service_pb2.ExportMetricsServiceRequest)
        ]

    def spans(self) -> list[SpanKey]:
        """Every acknowledged span, flattened, in arrival order."""
        return flatten_spans(self.trace_requests())

    def metric_points(self) -> dict[str, list[Message]]:
        """Every acknowledged data point by metric name."""
        return data_points_by_metric(self.metric_requests())

    @property
    def violations(self) -> list[str]:
        return [v for r in self.requests for v in r.violations]

    @property
    def in_flight(self) -> int:
        """Requests being handled right now (body read or being read, not yet answered)."""
        return self._in_flight.count

    # request handling (handler threads)

    def _handle_post(self, handler: _HttpHandler) -> None:
        with self._in_flight.track():
            self._handle_post_tracked(handler)

    def _handle_post_tracked(self, handler: _HttpHandler) -> None:
        path = urlsplit(handler.path).path
        signal: Signal | None = (
            "traces"
            if path.endswith("/v1/traces")
            else "metrics"
            if path.endswith("/v1/metrics")
            else None
        )
        headers: dict[str, str] = {}
        for name, value in handler.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        content_type = headers.get("content-type", "")
        encoding = headers.get("content-encoding", "").strip().lower()

        def record(
            status: int | None,
            violations: Iterable[str] = (),
            body: bytes = b"",
            request: ExportRequest | None = None,
            obj: Any = None,
        ) -> None:
            self._records.add(
                HttpRequestRecord(
                    path=path,
                    signal=signal,
                    headers=headers,
                    content_type=content_type,
                    content_encoding=encoding,
                    body=body,
                    request=request,
                    json=obj,
                    violations=tuple(violations),
                    status=status,
                )
            )

        length_header = headers.get("content-length")
        if length_header is None or not length_header.isdigit():
            record(411, ["missing or invalid Content-Length"])
            self._reply_error(handler, 411, "Content-Length required")
            return
        length = int(length_header)
        if length > _MAX_BODY:
            record(413, ["body exceeds 20 MiB"])
            self._reply_error(handler, 413, "body too large")
            return
        wire = handler.rfile.read(length)

        violations: list[str] = []
        body = wire
        if encoding == "gzip":
            try:
                body = _gunzip(wire)
            except (zlib.error, ValueError) as exc:
                violations.append(f"bad gzip body: {exc}")
        elif encoding not in ("", "identity"):
            violations.append(f"unsupported Content-Encoding {encoding!r}")

        request: ExportRequest | None = None
        obj: Any = None
        media_type = _media_type(content_type)
        if signal is None:
            record(404, [f"no OTLP signal at path {path!r}"], body)
            self._reply_error(handler, 404, "unknown path")
            return
        if not violations:
            if media_type == "application/x-protobuf":
                message = _REQUEST_TYPES[signal]()
                try:
                    message.ParseFromString(body)
                    request = message
                except DecodeError as exc:
                    violations.append(f"protobuf body does not decode: {exc}")
            elif media_type == "application/json":
                decoded, obj, problems = decode_otlp_json(body, signal)
                request = decoded
                violations.extend(problems)
            elif body.lstrip()[:1] in (b"{", b"["):
                violations.append(
                    f"JSON body sent with Content-Type {content_type!r}; "
                    "the spec requires application/json"
                )
            else:
                violations.append(f"unsupported Content-Type {content_type!r}")

        if violations:
            record(400, violations, body, request, obj)
            self._reply_error(handler, 400, "; ".join(violations))
            return

        mode = self._modes.next()
        if isinstance(mode, _BlackHole):
            record(None, (), body, request, obj)
            self._stopping.wait()
            handler.close_connection = True
            return
        if isinstance(mode, HttpReply):
            record(mode.status, (), body, request, obj)
            self._send(handler, mode.status, mode.body, mode.content_type, mode.headers)
            return
        if isinstance(mode, _Ok) and mode.delay > 0:
            self._stopping.wait(mode.delay)
        record(200, (), body, request, obj)
        response = _RESPONSE_TYPES[signal]()
        if media_type == "application/json":
            self._send(handler, 200, b"{}", "application/json")
        else:
            self._send(handler, 200, response.SerializeToString(), "application/x-protobuf")

    def _reply_error(self, handler: _HttpHandler, status: int, text: str) -> None:
        self._send(handler, status, text.encode(), "text/plain; charset=utf-8")

    @staticmethod
    def _send(
        handler: _HttpHandler,
        status: int,
        body: bytes,
        content_type: str,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)
        handler.wfile.flush()


# --- gRPC -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GrpcRequestRecord:
    """One Export call as the gRPC receiver saw it.

    `code` is what the receiver answered (None: black-holed). `metadata` is the invocation
    metadata in order, as sent (gRPC keys are lowercase; ``-bin`` values are bytes).
    """

    signal: Signal
    request: ExportRequest
    metadata: tuple[tuple[str, str | bytes], ...]
    code: grpc.StatusCode | None

    @property
    def metadata_dict(self) -> dict[str, str | bytes]:
        return dict(self.metadata)


class _TraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: GrpcOtlpReceiver) -> None:
        self._receiver = receiver

    def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._receiver._serve("traces", request, context)
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: GrpcOtlpReceiver) -> None:
        self._receiver = receiver

    def Export(
        self,
        request: metrics_service_pb2.ExportMetricsServiceRequest,
        context: grpc.ServicerContext,
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self._receiver._serve("metrics", request, context)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class GrpcOtlpReceiver:
    """An OTLP/gRPC receiver (TraceService and MetricsService) on 127.0.0.1.

    A sync ``grpc.server`` on its own thread pool, so it works from sync and async tests alike.
    See the module docstring for modes and accessors.
    """

    def __init__(self, *, max_workers: int = 16, port: int = 0) -> None:
        """`port`: 0 for an ephemeral one, or a given port (a backend that comes back there)."""
        self._max_workers = max_workers
        self._requested_port = port
        self._server: grpc.Server | None = None
        self._executor: futures.ThreadPoolExecutor | None = None
        self._port = 0
        self._stopping = threading.Event()
        self._parked_lock = threading.Lock()
        self._parked: set[threading.Event] = set()
        self._modes = _Modes()
        self._records = _Records()
        self._in_flight = _InFlight()
        self.errors: list[str] = []
        """Tracebacks of exceptions inside call handling; leaving ``with`` asserts none."""

    # lifecycle

    def start(self) -> GrpcOtlpReceiver:
        if self._server is not None:
            raise RuntimeError("already started")
        self._executor = futures.ThreadPoolExecutor(
            max_workers=self._max_workers, thread_name_prefix="grpc-otlp-receiver"
        )
        server = grpc.server(self._executor)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceServicer(self), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            _MetricsServicer(self), server
        )
        self._port = server.add_insecure_port(f"127.0.0.1:{self._requested_port}")
        if not self._port:
            raise RuntimeError(f"could not bind 127.0.0.1:{self._requested_port}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is None or self._stopping.is_set():
            return
        self._stopping.set()
        with self._parked_lock:
            for event in self._parked:
                event.set()
        self._server.stop(grace=0).wait(_STOP_JOIN_S)
        if self._executor is not None:
            # grpc.server does not own an executor it was given; joining it is our job.
            self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> GrpcOtlpReceiver:
        return self.start()

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        self.stop()
        _fail_on_handler_errors("gRPC OTLP receiver", self.errors, exc_type)

    # addresses

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("receiver not started")
        return self._port

    @property
    def address(self) -> str:
        """host:port, for grpc.insecure_channel()."""
        return f"127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        """ "http://127.0.0.1:PORT" — the form the OTLP gRPC exporters take (http = insecure)."""
        return f"http://{self.address}"

    # modes

    def respond_ok(self, *, delay: float = 0.0, times: int | None = None) -> None:
        """Answer OK (the default); with `delay`, only after holding the call that long."""
        self._modes.set(_Ok(delay), times)

    def fail_with(
        self, code: grpc.StatusCode, details: str = "", *, times: int | None = None
    ) -> None:
        """Abort Export calls with `code` and `details`."""
        if code is grpc.StatusCode.OK:
            raise ValueError("use respond_ok() for OK")
        self._modes.set(_GrpcFailure(code, details), times)

    def black_hole(self, *, times: int | None = None) -> None:
        """Take the call and never answer until the client gives up or stop() is called."""
        self._modes.set(_BlackHole(), times)

    # accessors

    @property
    def requests(self) -> list[GrpcRequestRecord]:
        return self._records.snapshot()

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[GrpcRequestRecord]:
        return self._records.wait_for(count, timeout)

    def clear(self) -> None:
        self._records.clear()

    def trace_requests(self) -> list[trace_service_pb2.ExportTraceServiceRequest]:
        """Trace requests that were answered OK."""
        return [
            r.request
            for r in self.requests
            if r.code is grpc.StatusCode.OK
            and isinstance(r.request, trace_service_pb2.ExportTraceServiceRequest)
        ]

    def metric_requests(self) -> list[metrics_service_pb2.ExportMetricsServiceRequest]:
        """Metric requests that were answered OK."""
        return [
            r.request
            for r in self.requests
            if r.code is grpc.StatusCode.OK
            and isinstance(r.request, metrics_service_pb2.ExportMetricsServiceRequest)
        ]

    def spans(self) -> list[SpanKey]:
        return flatten_spans(self.trace_requests())

    def metric_points(self) -> dict[str, list[Message]]:
        return data_points_by_metric(self.metric_requests())

    @property
    def in_flight(self) -> int:
        """Export calls being handled right now (taken, not yet answered)."""
        return self._in_flight.count

    # call handling (server threads)

    def _serve(self, signal: Signal, request: ExportRequest, context: grpc.ServicerContext) -> None:
        with self._in_flight.track():
            try:
                failure = self._answer(signal, request, context)
            except Exception:
                # A bug of the receiver's own, not an answer it chose: the test must fail.
                self.errors.append(traceback.format_exc())
                raise
            if failure is not None:
                context.abort(*failure)

    def _answer(
        self, signal: Signal, request: ExportRequest, context: grpc.ServicerContext
    ) -> tuple[grpc.StatusCode, str] | None:
        """Record the call; the (code, details) to abort it with, or None to answer OK."""
        metadata = tuple((m.key, m.value) for m in context.invocation_metadata())
        copy = type(request)()
        copy.CopyFrom(request)
        mode = self._modes.next()
        if isinstance(mode, _BlackHole):
            self._records.add(GrpcRequestRecord(signal, copy, metadata, None))
            done = threading.Event()
            with self._parked_lock:
                self._parked.add(done)
            try:
                # The callback fires when the client cancels or its deadline passes.
                if context.add_callback(done.set) and not self._stopping.is_set():
                    done.wait()
            finally:
                with self._parked_lock:
                    self._parked.discard(done)
            return grpc.StatusCode.UNAVAILABLE, "black-holed request released"
        if isinstance(mode, _GrpcFailure):
            self._records.add(GrpcRequestRecord(signal, copy, metadata, mode.code))
            return mode.code, mode.details
        if isinstance(mode, _Ok) and mode.delay > 0:
            self._stopping.wait(mode.delay)
        self._records.add(GrpcRequestRecord(signal, copy, metadata, grpc.StatusCode.OK))
        return None


# --- TLS with a certificate nobody trusts ----------------------------------------------------


def _self_signed_pem(directory: str) -> tuple[str, str]:
    """A certificate for 127.0.0.1/localhost signed by itself, and its key, as PEM files."""
    import datetime
    import ipaddress
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aigw-test-untrusted")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


@contextlib.contextmanager
def untrusted_tls_endpoint(path: str = "/v1/traces") -> Iterator[str]:
    """An ``https://127.0.0.1:PORT{path}`` URL whose server offers a self-signed certificate.

    Every client that verifies certificates (all our exporters do) fails the handshake; the
    server only handshakes, so nothing is ever exported there.
    """
    import ssl
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*_self_signed_pem(directory))
    stop = threading.Event()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.settimeout(0.05)

        def handshake(conn: socket.socket) -> None:
            with conn:
                conn.settimeout(5)
                # The client rejects our certificate: the handshake fails, as intended.
                with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True):
                    pass

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                threading.Thread(target=handshake, args=(conn,), daemon=True).start()

        thread = threading.Thread(target=serve, name="untrusted-tls", daemon=True)
        thread.start()
        try:
            yield f"https://127.0.0.1:{listener.getsockname()[1]}{path}"
        finally:
            stop.set()
            thread.join(_STOP_JOIN_S)


# --- receivers that serve TLS (a CA's server certificate, optionally mTLS) -------------------


@dataclass(frozen=True)
class ServerTls:
    """What a TLS receiver serves: its certificate chain and key (PEM); with `client_ca_pem`,
    mTLS: a client must present a certificate that CA issued. `max_version` caps what the
    HTTP receiver speaks (a backend stuck on TLS 1.2)."""

    cert_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes | None = None
    max_version: Any = None  # ssl.TLSVersion

    def ssl_context(self) -> Any:
        import ssl
        import tempfile

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as directory:
            cert, key = f"{directory}/cert.pem", f"{directory}/key.pem"
            with open(cert, "wb") as f:
                f.write(self.cert_pem)
            with open(key, "wb") as f:
                f.write(self.key_pem)
            context.load_cert_chain(cert, key)
        if self.client_ca_pem is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cadata=self.client_ca_pem.decode())
        if self.max_version is not None:
            context.maximum_version = self.max_version
        return context


class _TlsHttpServer(_HttpServer):
    """Handshakes each connection in its handler thread; a failed handshake is recorded in
    the receiver's `tls_errors` (clients refusing us is what TLS tests provoke), not `errors`."""

    def __init__(self, receiver: TlsHttpOtlpReceiver, port: int, context: Any) -> None:
        self.tls_context = context
        super().__init__(receiver, port)  # type: ignore[arg-type]

    def finish_request(self, request: Any, client_address: Any) -> None:
        receiver: TlsHttpOtlpReceiver = self.receiver  # type: ignore[assignment]
        request.settimeout(5)
        conn = self.tls_context.wrap_socket(
            request, server_side=True, do_handshake_on_connect=False
        )
        # wrap_socket took over the file descriptor: stop() must wake the TLS socket.
        with self._conn_lock:
            self.connections.discard(request)
            self.connections.add(conn)
        try:
            conn.do_handshake()
        except OSError as exc:  # ssl.SSLError included
            receiver.tls_errors.append(str(exc))
            _close_after_alert(conn)
            with self._conn_lock:
                self.connections.discard(conn)
            return
        try:
            peer = conn.getpeercert()
            if peer:
                receiver.client_subjects.append(
                    ",".join(f"{k}={v}" for rdn in peer.get("subject", ()) for k, v in rdn)
                )
            super().finish_request(conn, client_address)
        finally:
            with self._conn_lock:
                self.connections.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()


def _close_after_alert(conn: Any) -> None:
    """Close a connection whose handshake failed so that the client reads our alert: FIN after
    it, and what the client sent meanwhile drained (closing with unread data would send a
    reset, and the client would see a bare EOF instead of "certificate required")."""
    import os

    with contextlib.suppress(OSError):
        raw = socket.socket(fileno=os.dup(conn.fileno()))
        with raw:
            raw.shutdown(socket.SHUT_WR)
            raw.settimeout(1.0)
            while raw.recv(65536):
                pass
    with contextlib.suppress(OSError):
        conn.close()


class TlsHttpOtlpReceiver(HttpOtlpReceiver):
    """`HttpOtlpReceiver` over TLS: ``https://127.0.0.1:PORT``.

    ``tls_errors``: handshakes that failed (the client refused our certificate, or we refused
    the client's); ``client_subjects``: the subject of each client certificate accepted (mTLS).
    """

    def __init__(self, tls: ServerTls, *, port: int = 0) -> None:
        super().__init__(port=port)
        self.tls = tls
        self.tls_errors: list[str] = []
        self.client_subjects: list[str] = []

    def start(self) -> TlsHttpOtlpReceiver:
        if self._server is not None:
            raise RuntimeError("already started")
        self._server = _TlsHttpServer(self, self._requested_port, self.tls.ssl_context())
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="https-otlp-receiver",
            daemon=True,
        )
        self._thread.start()
        return self

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"


class TlsGrpcOtlpReceiver(GrpcOtlpReceiver):
    """`GrpcOtlpReceiver` over TLS (``endpoint`` is ``https://127.0.0.1:PORT``); with
    `ServerTls.client_ca_pem`, clients must present a certificate from that CA."""

    def __init__(self, tls: ServerTls, *, max_workers: int = 16) -> None:
        super().__init__(max_workers=max_workers)
        self.tls = tls

    def start(self) -> TlsGrpcOtlpReceiver:
        if self._server is not None:
            raise RuntimeError("already started")
        self._executor = futures.ThreadPoolExecutor(
            max_workers=self._max_workers, thread_name_prefix="grpcs-otlp-receiver"
        )
        server = grpc.server(self._executor)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceServicer(self), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            _MetricsServicer(self), server
        )
        credentials = grpc.ssl_server_credentials(
            [(self.tls.key_pem, self.tls.cert_pem)],
            root_certificates=self.tls.client_ca_pem,
            require_client_auth=self.tls.client_ca_pem is not None,
        )
        self._port = server.add_secure_port("127.0.0.1:0", credentials)
        if not self._port:
            raise RuntimeError("could not bind 127.0.0.1:0")
        server.start()
        self._server = server
        return self

    @property
    def endpoint(self) -> str:
        return f"https://{self.address}"
