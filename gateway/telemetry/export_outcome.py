"""The one place where what a lower layer did on an export becomes an `ExportOutcome`.

Our exporters stand on three transports — ``requests`` (the official OTLP/HTTP protobuf
exporters), ``httpx`` (our OTLP/JSON exporters) and ``grpc`` (the official OTLP/gRPC
exporters) — each wrapping ``ssl`` and OS errors its own way. The same failure must read the
same whatever the encoding, so every exporter hands what it got (an exception, an HTTP
response, a gRPC status) to a builder here, and nothing else in the gateway interprets
transport errors. Like httpx's ``map_httpcore_exceptions``, the mapping is a table: the root
cause the operating system or TLS library reported (found anywhere in the exception's cause
chain) wins over the wrapper a library put around it, so ``requests``' ``HTTPConnectionPool(…):
Max retries exceeded`` and httpx's ``ConnectError: [Errno 111]`` both become
``connection_refused: connection refused (127.0.0.1:4318)``.

The reason tree (``reason`` is low-cardinality, a metric label; anything else is rejected)::

    ""                        success: a 2xx, or gRPC OK
    no answer from the backend
    ├── timeout               the budget ran out (connect, read, gRPC DEADLINE_EXCEEDED)
    ├── connection_refused    could not connect: refused, name not resolved, unreachable
    ├── tls                   handshake or certificate verification failed (the verifier's words)
    └── unknown               anything else (connection closed without an answer, a bug …)
    the backend answered
    ├── http_3xx              a redirect: a failure, never followed (Location in the message)
    ├── http_4xx              e.g. 401 invalid key, 429 (after retries)
    ├── http_5xx              e.g. 503 (after retries)
    ├── unknown               1xx or a status outside 100–599
    └── grpc_<code>           any other gRPC status, e.g. grpc_unauthenticated

One message shape:

* no answer: ``<what happened> (<host:port>)`` — ``connection refused (127.0.0.1:4318)``,
  ``timed out (collector:4317)``, ``certificate verify failed: self-signed certificate
  (collector:443)``; an unrecognised error is ``<ExceptionType>: <its text> (<host:port>)``.
  TLS failures keep the verifier's words (``certificate verify failed: unable to get local
  issuer certificate``, ``… certificate has expired``, ``… IP address mismatch, certificate is
  not valid for '10.0.0.7'`` — gRPC, which checks names itself: ``… hostname mismatch``); a
  server that drops the connection as TLS starts (a client certificate required, or ours
  refused) is ``TLS connection closed by the server (does it require a client certificate …)``
  or, where the alert arrives, ``TLS handshake failed: tlsv13 alert certificate required``;
* an answer: the backend's own words — the ``message`` of a ``google.rpc.Status`` body, a JSON
  ``message``, plain text or HTML, or gRPC details; the status line (``401 Unauthorized``) when
  the body says nothing. A *success* body is never kept: it is not an error message, and
  echoing it would make an endpoint test a reader of whatever answers 2xx. (The one thing read
  from a 2xx is OTLP's own ``partialSuccess`` — the rejected count and its ``errorMessage``,
  the fields the protocol defines for data it refused; see `partial_success`.)

Every message is redacted (`gateway.redaction`, with every value we put on the wire), folded
to one printable line, and only then capped at `MESSAGE_LIMIT` bytes of UTF-8, so no
half-secret survives the cut and no backend can inject log lines.

The lower layers' own logging is translated too: `demote_to_debug` turns the official
exporters' per-export WARNING/ERROR lines (and httpx's per-request INFO line) into DEBUG
records, because our exporters already report every outcome once, as a state change
(`export_stats`).
"""

from __future__ import annotations

import errno
import http
import json
import logging
import re
import socket
import ssl
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import grpc
import httpx
import requests
import urllib3.exceptions
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from gateway.redaction import REDACTED, redact

__all__ = [
    "MESSAGE_LIMIT",
    "REDACTED",
    "ExportOutcome",
    "demote_to_debug",
    "endpoint_address",
    "outcome_from_exception",
    "outcome_from_grpc",
    "outcome_from_http",
    "outcome_from_response",
    "partial_success",
    "reason_for_grpc_code",
    "reason_for_http_status",
    "redact",
    "reported_outcome",
]

MESSAGE_LIMIT: Final[int] = 1024  # bytes of UTF-8

_FIXED_REASONS: Final[frozenset[str]] = frozenset(
    {"timeout", "connection_refused", "tls", "http_3xx", "http_4xx", "http_5xx", "unknown"}
)
_GRPC_REASONS: Final[frozenset[str]] = frozenset(
    f"grpc_{code.name.lower()}" for code in grpc.StatusCode if code is not grpc.StatusCode.OK
)


def _cap(text: str) -> str:
    raw = text.encode("utf-8")
    if len(raw) <= MESSAGE_LIMIT:
        return text
    return raw[:MESSAGE_LIMIT].decode("utf-8", errors="ignore")


@dataclass(frozen=True, slots=True)
class ExportOutcome:
    """The result of one export attempt (including its retries).

    `http_status` is 0 and `grpc_code` is "" when the transport never produced one (e.g. the
    connection was refused); `grpc_code` is the upper-case `grpc.StatusCode` name.
    """

    success: bool
    reason: str = ""
    http_status: int = 0
    grpc_code: str = ""
    message: str = ""

    def __post_init__(self) -> None:
        # Enforced here rather than trusted to the builders: `reason` becomes a metric label,
        # and one free-form value would explode its cardinality.
        if self.success and self.reason:
            raise ValueError(f"a successful outcome has no reason, got {self.reason!r}")
        if not self.success and self.reason not in _FIXED_REASONS | _GRPC_REASONS:
            raise ValueError(f"invalid failure reason {self.reason!r}")
        object.__setattr__(self, "message", _cap(self.message))


_SUCCESS = ExportOutcome(success=True)
_UNKNOWN_FAILURE = ExportOutcome(success=False, reason="unknown", message="exporter failed")


def reported_outcome(exporter: object, success: bool) -> ExportOutcome:
    """What `exporter` said of its last export (`last_outcome`), when that agrees with the
    bare SUCCESS/FAILURE it returned; else an outcome built from that result alone."""
    outcome = getattr(exporter, "last_outcome", None)
    if isinstance(outcome, ExportOutcome) and outcome.success == success:
        return outcome
    return _SUCCESS if success else _UNKNOWN_FAILURE


# --- messages ------------------------------------------------------------------------------

_WHITESPACE: Final[re.Pattern[str]] = re.compile(r"\s+")


def _clean(text: str, secrets: Iterable[str]) -> str:
    """Redacted, one printable line, capped — in that order."""
    text = redact(text, secrets)
    text = "".join(c if c.isprintable() else " " for c in text)
    return _cap(_WHITESPACE.sub(" ", text).strip())


def endpoint_address(endpoint: str) -> str:
    """``host:port`` of an endpoint URL (``[v6]:port`` for IPv6), for messages: no scheme,
    user, path or query — they can hold tokens. The port is the scheme's default if absent."""
    parts = urlsplit(endpoint if "//" in endpoint else f"//{endpoint}")
    host = parts.hostname or ""
    if not host:
        return ""
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = {"http": 80, "https": 443}.get(parts.scheme.lower())
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port else shown


def _at(phrase: str, address: str) -> str:
    return f"{phrase} ({address})" if address else phrase


# --- HTTP ----------------------------------------------------------------------------------


def reason_for_http_status(status: int) -> str:
    """The failure reason for an HTTP status ("" for 2xx)."""
    if 200 <= status < 300:
        return ""
    if 300 <= status < 400:
        return "http_3xx"
    if 400 <= status < 500:
        return "http_4xx"
    if 500 <= status < 600:
        return "http_5xx"
    return "unknown"


def _status_line(status: int) -> str:
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP status {status}"


def _body_text(body: bytes | str, content_type: str) -> str:
    """The human part of an error body.

    OTLP says error bodies are a `google.rpc.Status` in the request's encoding, so we pull out
    its `message`; many real backends (and proxies in front of them) send plain text or HTML
    instead, which we keep verbatim.
    """
    raw = body.encode("utf-8", errors="replace") if isinstance(body, str) else body
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/x-protobuf" and raw:
        status = status_pb2.Status()
        try:
            status.ParseFromString(raw)
        except DecodeError:
            pass
        else:
            if status.message:
                return status.message
    text = raw.decode("utf-8", errors="replace")
    if media_type.endswith("json") or text.lstrip().startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError:
            return text
        if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
            return parsed["message"]
    return text


def _safe_location(location: str) -> str:
    """Where a redirect points, without userinfo, query or fragment (they can hold tokens)."""
    parts = urlsplit(location.strip())
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    origin = f"{parts.scheme}://{host}{port}" if parts.scheme and host else ""
    return f"{origin}{parts.path}" or "?"


def outcome_from_http(
    status: int,
    body: bytes | str = b"",
    *,
    content_type: str = "",
    location: str = "",
    secrets: Iterable[str] = (),
) -> ExportOutcome:
    """Outcome of an HTTP answer: success for 2xx (the body is not kept), else the status
    class with the backend's words (a redirect: where it points)."""
    reason = reason_for_http_status(status)
    if not reason:
        return ExportOutcome(success=True, http_status=status)
    if reason == "http_3xx":
        target = f"to {_safe_location(location)}" if location.strip() else "without a Location"
        text = f"{_status_line(status)} {target}; redirects are not followed"
    else:
        text = _body_text(body, content_type)
        if not text.strip():
            text = _status_line(status)
    return ExportOutcome(
        success=False, reason=reason, http_status=status, message=_clean(text, secrets)
    )


def outcome_from_response(response: Any, *, secrets: Iterable[str] = ()) -> ExportOutcome:
    """Outcome of a `requests.Response` or an `httpx.Response` (both read the same)."""
    headers = response.headers
    status = int(response.status_code)
    return outcome_from_http(
        status,
        # A success body is never read into a message; do not even touch it.
        b"" if 200 <= status < 300 else response.content,
        content_type=headers.get("content-type", ""),
        location=headers.get("location", ""),
        secrets=secrets,
    )


def partial_success(
    status: int, rejected: int, error_message: str, *, secrets: Iterable[str] = ()
) -> ExportOutcome:
    """A 2xx whose OTLP ``partialSuccess`` rejected data: still a success (the spec forbids
    retrying it), with the count and the backend's ``errorMessage`` — the fields OTLP defines
    for this, not the body."""
    text = f"partial success: {rejected} rejected" + (f": {error_message}" if error_message else "")
    return ExportOutcome(success=True, http_status=status, message=_clean(text, secrets))


# --- gRPC ----------------------------------------------------------------------------------


def reason_for_grpc_code(code: grpc.StatusCode) -> str:
    """The failure reason for a gRPC status that the backend itself answered ("" for OK)."""
    return "" if code is grpc.StatusCode.OK else f"grpc_{code.name.lower()}"


_CLOSED_IN_HANDSHAKE: Final[str] = (
    "TLS connection closed by the server (does it require a client certificate, or not "
    "accept ours?)"
)

_GRPC_TLS_WORDS: Final[re.Pattern[str]] = re.compile(r"OPENSSL_internal:([A-Z_]+)(?::\s*(.*))?")


def _grpc_tls_phrase(details: str) -> str:
    """The verifier's words from gRPC core's handshake error (BoringSSL's, e.g.
    ``CERTIFICATE_VERIFY_FAILED: self signed certificate``), in the shape `_ssl_words` gives
    Python's own ssl errors."""
    match = _GRPC_TLS_WORDS.search(details)
    if match is None:
        return "TLS handshake failed"
    words = match.group(1).lower().replace("_", " ")
    # gRPC appends its own status text ("…: OK") after the verifier's words.
    detail = re.sub(r":\s*OK$", "", (match.group(2) or "").strip()).strip().rstrip(".")
    if words == "certificate verify failed":
        return f"{words}: {detail}" if detail else words
    return f"TLS handshake failed: {words}"


def _grpc_transport_failure(
    code: grpc.StatusCode, details: str, tls: bool
) -> tuple[str, str] | None:
    """(reason, phrase) when gRPC core, not the backend, produced the status; `tls`: the
    channel was a TLS one."""
    low = details.lower()
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return "timeout", "timed out"
    if code is not grpc.StatusCode.UNAVAILABLE:
        return None
    if "errors resolving" in low or "dns resolution failed" in low:
        return "connection_refused", "cannot resolve host name"
    if "failed to connect" in low:
        if "handshake failed" in low or "ssl_error" in low or "tsi_" in low:
            return "tls", _grpc_tls_phrase(details)
        if "hostname verification" in low:
            # gRPC checks the name itself, after BoringSSL verified the chain.
            return "tls", "certificate verify failed: hostname mismatch"
        if "verification check failed" in low:
            return "tls", "certificate verify failed"
        if tls and "socket closed" in low:
            # TLS 1.3: the server checks our certificate after we think the handshake is done,
            # and gRPC core only sees the connection close.
            return "tls", _CLOSED_IN_HANDSHAKE
        if "connection refused" in low:
            return "connection_refused", "connection refused"
        if "no route to host" in low or "host is unreachable" in low:
            return "connection_refused", "host unreachable"
        if "network is unreachable" in low:
            return "connection_refused", "network unreachable"
        return "connection_refused", "could not connect"
    if low.startswith(("socket closed", "connection reset", "broken pipe")):
        return "unknown", "connection closed by the server"
    return None


def outcome_from_grpc(
    code: grpc.StatusCode,
    details: str = "",
    *,
    address: str = "",
    secrets: Iterable[str] = (),
    tls: bool = False,
) -> ExportOutcome:
    """Outcome of a finished gRPC call: transport failures read as they do over HTTP, a status
    the backend answered is ``grpc_<code>`` with its details. `tls`: over a TLS channel."""
    if code is grpc.StatusCode.OK:
        return ExportOutcome(success=True, grpc_code=code.name)
    details = details or ""
    transport = _grpc_transport_failure(code, details, tls)
    if transport is not None:
        reason, text = transport[0], _at(transport[1], address)
    else:
        reason, text = reason_for_grpc_code(code), details or code.name
    return ExportOutcome(
        success=False, reason=reason, grpc_code=code.name, message=_clean(text, secrets)
    )


# --- exceptions ----------------------------------------------------------------------------


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and everything it wraps, outermost first: ``__cause__``, ``__context__``,
    urllib3's ``reason`` and exceptions passed as arguments (``requests`` wraps that way)."""
    seen: set[int] = set()
    queue = [exc]
    while queue and len(seen) < 32:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        linked += list(getattr(current, "args", ()))
        queue += [e for e in linked if isinstance(e, BaseException)]


def _is(*types: type[BaseException]) -> Callable[[BaseException], bool]:
    return lambda e: isinstance(e, types)


def _errno(code: int) -> Callable[[BaseException], bool]:
    return lambda e: isinstance(e, OSError) and e.errno == code


def _constant(phrase: str) -> Callable[[BaseException], str]:
    return lambda e: phrase


def _ssl_words(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLEOFError):
        return _CLOSED_IN_HANDSHAKE
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        return f"TLS handshake failed: {reason.lower().replace('_', ' ')}"
    return "TLS handshake failed"


_Rule = tuple[Callable[[BaseException], bool], str, Callable[[BaseException], str]]

# Root causes first: what the OS or the TLS library said, wherever it sits in the chain.
# Within a tier the first rule matching any link wins, so the order is the priority.
_ROOT_RULES: Final[tuple[_Rule, ...]] = (
    (_is(TimeoutError), "timeout", _constant("timed out")),
    (_is(ssl.SSLError), "tls", _ssl_words),
    (_is(ConnectionRefusedError), "connection_refused", _constant("connection refused")),
    (_is(socket.gaierror), "connection_refused", _constant("cannot resolve host name")),
    (_errno(errno.EHOSTUNREACH), "connection_refused", _constant("host unreachable")),
    (_errno(errno.ENETUNREACH), "connection_refused", _constant("network unreachable")),
    (
        _is(ConnectionResetError, ConnectionAbortedError, BrokenPipeError),
        "unknown",
        _constant("connection closed by the server"),
    ),
)
# Then the libraries' own classes, for failures they detected themselves. (Not urllib3's
# TimeoutError: its NewConnectionError, a refusal, is a subclass of it.)
_LIBRARY_RULES: Final[tuple[_Rule, ...]] = (
    (_is(httpx.TimeoutException, requests.Timeout), "timeout", _constant("timed out")),
    (_is(requests.exceptions.SSLError), "tls", _constant("TLS handshake failed")),
    (
        _is(httpx.ConnectError, requests.ConnectionError, urllib3.exceptions.NewConnectionError),
        "connection_refused",
        _constant("could not connect"),
    ),
    (
        _is(
            httpx.RemoteProtocolError,
            httpx.ReadError,
            httpx.WriteError,
            urllib3.exceptions.ProtocolError,
        ),
        "unknown",
        _constant("connection closed by the server"),
    ),
)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def outcome_from_exception(
    exc: BaseException, *, address: str = "", secrets: Iterable[str] = ()
) -> ExportOutcome:
    """Outcome of an attempt that raised instead of producing an answer.

    `address` (``host:port``, see `endpoint_address`) is where we were going; it is named in
    the message, since the libraries' own wording of it differs.
    """
    if isinstance(exc, grpc.RpcError):
        code = getattr(exc, "code", None)
        details = getattr(exc, "details", None)
        if callable(code) and isinstance(status_code := code(), grpc.StatusCode):
            return outcome_from_grpc(
                status_code,
                str(details() or "") if callable(details) else "",
                address=address,
                secrets=secrets,
            )
    chain = list(_causes(exc))
    for rules in (_ROOT_RULES, _LIBRARY_RULES):
        for matches, reason, phrase in rules:
            for link in chain:
                if matches(link):
                    return ExportOutcome(
                        success=False,
                        reason=reason,
                        message=_clean(_at(phrase(link), address), secrets),
                    )
    # Unrecognised: the deepest cause's own words, without the wrappers' noise.
    return ExportOutcome(
        success=False, reason="unknown", message=_clean(_at(_describe(chain[-1]), address), secrets)
    )


# --- the lower layers' own log lines -------------------------------------------------------


class _DemoteToDebug(logging.Filter):
    def __init__(self, when: Callable[[logging.LogRecord], bool] | None) -> None:
        super().__init__()
        self.when = when

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG or (self.when is not None and not self.when(record)):
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def demote_to_debug(
    logger_name: str, when: Callable[[logging.LogRecord], bool] | None = None
) -> None:
    """Records of `logger_name` (those `when` selects) are logged at DEBUG instead; idempotent.

    For libraries that log every failed (or even successful) request: we report each outcome
    ourselves, once per state change, and their lines would repeat it on every export.
    """
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, _DemoteToDebug) and f.when is when for f in logger.filters):
        logger.addFilter(_DemoteToDebug(when))
