"""What happened on one telemetry export attempt, in a form safe to show and to count.

An `ExportOutcome` is what our exporters leave behind after every `export()` call
(`last_outcome`): the config manager turns it into endpoint health and into the answer of the
"test this endpoint" RPC, and the gateway's own metrics count failures by `reason`.

Two properties are guaranteed by construction, because outcomes travel to places (admin RPC
responses, logs, metric labels) where a mistake is hard to take back:

* `reason` is low-cardinality, so it can be a metric label: ``""`` on success, otherwise one of
  ``"timeout"``, ``"connection_refused"``, ``"http_4xx"``, ``"http_5xx"``,
  ``"grpc_<lowercase status code name>"`` (e.g. ``"grpc_unavailable"``) or ``"unknown"``.
  Anything else is rejected when the outcome is built.
* `message` is the backend's own words (HTTP response body, the ``message`` of a
  ``google.rpc.Status`` body, gRPC details, or the exception text), with every header value we
  sent redacted *before* it is capped to `MESSAGE_LIMIT` characters — backends love to echo a
  rejected API key back, and capping first could leave half a secret behind.

The builders (`outcome_from_http`, `outcome_from_exception`, `outcome_from_grpc`) take the
header values to redact as ``secrets``; callers pass every value they put on the wire.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import grpc
import httpx
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

__all__ = [
    "MESSAGE_LIMIT",
    "REDACTED",
    "ExportOutcome",
    "outcome_from_exception",
    "outcome_from_grpc",
    "outcome_from_http",
    "reason_for_grpc_code",
    "reason_for_http_status",
    "redact",
    "reported_outcome",
]

MESSAGE_LIMIT: Final[int] = 1024
REDACTED: Final[str] = "[REDACTED]"

_FIXED_REASONS: Final[frozenset[str]] = frozenset(
    {"timeout", "connection_refused", "http_4xx", "http_5xx", "unknown"}
)
_GRPC_REASONS: Final[frozenset[str]] = frozenset(
    f"grpc_{code.name.lower()}" for code in grpc.StatusCode if code is not grpc.StatusCode.OK
)
# Pieces of a header value that a backend may echo on their own ("Bearer sk-abc" → "sk-abc").
# Short pieces such as "Bearer" or "Basic" are not secrets and redacting them would only garble
# the message, hence the length floor — the whole value is always redacted regardless.
_TOKEN_SPLIT: Final[re.Pattern[str]] = re.compile(r"[\s,;=]+")
_MIN_TOKEN_LEN: Final[int] = 8


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
        if len(self.message) > MESSAGE_LIMIT:
            object.__setattr__(self, "message", self.message[:MESSAGE_LIMIT])


_SUCCESS = ExportOutcome(success=True)
_UNKNOWN_FAILURE = ExportOutcome(success=False, reason="unknown", message="exporter failed")


def reported_outcome(exporter: object, success: bool) -> ExportOutcome:
    """What `exporter` said of its last export (`last_outcome`), when that agrees with the
    bare SUCCESS/FAILURE it returned; else an outcome built from that result alone."""
    outcome = getattr(exporter, "last_outcome", None)
    if isinstance(outcome, ExportOutcome) and outcome.success == success:
        return outcome
    return _SUCCESS if success else _UNKNOWN_FAILURE


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret (and of its long tokens) in `text`."""
    needles: set[str] = set()
    for secret in secrets:
        value = secret.strip()
        if not value:
            continue
        needles.add(value)
        needles.update(t for t in _TOKEN_SPLIT.split(value) if len(t) >= _MIN_TOKEN_LEN)
    # Longest first, so a token never pre-empts the full value that contains it.
    for needle in sorted(needles, key=len, reverse=True):
        text = text.replace(needle, REDACTED)
    return text


def _clean(text: str, secrets: Iterable[str]) -> str:
    return redact(text, secrets)[:MESSAGE_LIMIT]


def reason_for_http_status(status: int) -> str:
    """The failure reason for a non-2xx HTTP status ("" for 2xx)."""
    if 200 <= status < 300:
        return ""
    if 400 <= status < 500:
        return "http_4xx"
    if 500 <= status < 600:
        return "http_5xx"
    # 1xx/3xx: httpx does not follow redirects for us, and a redirect to a telemetry backend is
    # a misconfiguration we report rather than silently chase.
    return "unknown"


def reason_for_grpc_code(code: grpc.StatusCode) -> str:
    """The failure reason for a gRPC status ("" for OK)."""
    return "" if code is grpc.StatusCode.OK else f"grpc_{code.name.lower()}"


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


def outcome_from_http(
    status: int,
    body: bytes | str = b"",
    *,
    content_type: str = "",
    secrets: Iterable[str] = (),
) -> ExportOutcome:
    """Outcome of an HTTP response: success for 2xx, else the status class and body text."""
    reason = reason_for_http_status(status)
    message = _clean(_body_text(body, content_type), secrets)
    if not reason:
        return ExportOutcome(success=True, http_status=status, message=message)
    return ExportOutcome(success=False, reason=reason, http_status=status, message=message)


def outcome_from_grpc(
    code: grpc.StatusCode, details: str = "", *, secrets: Iterable[str] = ()
) -> ExportOutcome:
    """Outcome of a finished gRPC call."""
    reason = reason_for_grpc_code(code)
    return ExportOutcome(
        success=not reason,
        reason=reason,
        grpc_code=code.name,
        message=_clean(details or "", secrets),
    )


def outcome_from_exception(exc: BaseException, *, secrets: Iterable[str] = ()) -> ExportOutcome:
    """Outcome of an attempt that raised instead of producing a status.

    httpx.ConnectError covers DNS failures and unreachable hosts as well as refused
    connections; they share one reason because the operator's fix is the same (check the
    endpoint), and the message tells them apart.
    """
    if isinstance(exc, grpc.RpcError):
        code = getattr(exc, "code", None)
        details = getattr(exc, "details", None)
        if callable(code) and isinstance(status_code := code(), grpc.StatusCode):
            return outcome_from_grpc(
                status_code,
                str(details() or "") if callable(details) else "",
                secrets=secrets,
            )
    text = str(exc)
    message = _clean(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, secrets)
    # TimeoutException before ConnectError: httpx.ConnectTimeout is a timeout, not a refusal.
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        reason = "timeout"
    elif isinstance(exc, httpx.ConnectError | ConnectionRefusedError):
        reason = "connection_refused"
    else:
        reason = "unknown"
    return ExportOutcome(success=False, reason=reason, message=message)
