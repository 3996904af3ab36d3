"""Errors the data plane raises, and the one table that maps them to gRPC status codes.

    GatewayError                    code                 error.type
    ├── InvalidRequest              INVALID_ARGUMENT     invalid_argument
    ├── RouteNotFound               NOT_FOUND            route_not_found
    └── UpstreamError               (by kind)
        ├── UpstreamHTTPError       by HTTP status       the status, e.g. "429"
        ├── UpstreamUnreachable     UNAVAILABLE          connection_error
        ├── UpstreamTimeout         DEADLINE_EXCEEDED    timeout
        ├── UpstreamCredentials     FAILED_PRECONDITION  credentials
        └── UpstreamProtocolError   UNAVAILABLE          invalid_response

Upstream HTTP statuses (`HTTP_STATUS_TO_GRPC`): 400/413/422 → INVALID_ARGUMENT (the request
itself is wrong), 401/402/403 → FAILED_PRECONDITION (the *gateway's* credentials or account
failed — UNAUTHENTICATED would wrongly blame the caller), 404 → NOT_FOUND, 408 →
DEADLINE_EXCEEDED, 429 → RESOURCE_EXHAUSTED, any other 4xx → FAILED_PRECONDITION, 5xx →
UNAVAILABLE (retryable). Provider modules raise these; nothing else translates upstream errors.
"""

from __future__ import annotations

import grpc

__all__ = [
    "HTTP_STATUS_TO_GRPC",
    "GatewayError",
    "InvalidRequest",
    "RouteNotFound",
    "UpstreamCredentials",
    "UpstreamError",
    "UpstreamHTTPError",
    "UpstreamProtocolError",
    "UpstreamTimeout",
    "UpstreamUnreachable",
    "cancellation",
    "grpc_code_for_http_status",
]

HTTP_STATUS_TO_GRPC: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.FAILED_PRECONDITION,
    402: grpc.StatusCode.FAILED_PRECONDITION,
    403: grpc.StatusCode.FAILED_PRECONDITION,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def grpc_code_for_http_status(status: int) -> grpc.StatusCode:
    if status in HTTP_STATUS_TO_GRPC:
        return HTTP_STATUS_TO_GRPC[status]
    if 400 <= status < 500:
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.UNAVAILABLE


class GatewayError(Exception):
    """An error with the gRPC status the caller gets and a low-cardinality `error.type`."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    error_type: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(GatewayError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    error_type = "invalid_argument"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class RouteNotFound(GatewayError):
    code = grpc.StatusCode.NOT_FOUND
    error_type = "route_not_found"

    def __init__(self, model: str, known: list[str]) -> None:
        super().__init__(
            f"model: no route named {model!r}; known routes: {', '.join(sorted(known)) or 'none'}"
        )


class UpstreamError(GatewayError):
    code = grpc.StatusCode.UNAVAILABLE
    error_type = "upstream_error"

    def __init__(self, route: str, message: str) -> None:
        super().__init__(f"route {route!r}: {message}")
        self.route = route


class UpstreamHTTPError(UpstreamError):
    def __init__(self, route: str, status: int, upstream_message: str) -> None:
        super().__init__(route, f"upstream answered HTTP {status}: {upstream_message}")
        self.status = status
        self.upstream_message = upstream_message
        self.code = grpc_code_for_http_status(status)
        self.error_type = str(status)


class UpstreamUnreachable(UpstreamError):
    error_type = "connection_error"


class UpstreamTimeout(UpstreamError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    error_type = "timeout"


class UpstreamCredentials(UpstreamError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    error_type = "credentials"


class UpstreamProtocolError(UpstreamError):
    error_type = "invalid_response"


class Cancellation:
    """Why a handler was cancelled, for its spans and metrics: gRPC cancels the handler both
    when the client goes away and when the client's deadline passes, and the two must not read
    alike (a deadline is `timeout`, as an upstream timeout is)."""

    __slots__ = ("code", "error_type", "message")

    def __init__(self, code: grpc.StatusCode, error_type: str, message: str) -> None:
        self.code = code
        self.error_type = error_type
        self.message = message


_DEADLINE_PASSED = Cancellation(
    grpc.StatusCode.DEADLINE_EXCEEDED, UpstreamTimeout.error_type, "the client's deadline passed"
)
_CLIENT_CANCELLED = Cancellation(grpc.StatusCode.CANCELLED, "cancelled", "cancelled by the client")
# gRPC cancels at the deadline, so time left then is zero; a millisecond absorbs clock reads.
_DEADLINE_SLACK_SECONDS = 0.001


def cancellation(context: grpc.aio.ServicerContext) -> Cancellation:
    remaining = context.time_remaining()
    if remaining is not None and remaining < _DEADLINE_SLACK_SECONDS:
        return _DEADLINE_PASSED
    return _CLIENT_CANCELLED
