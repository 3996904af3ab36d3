"""Who may call what.

- AdminService: with AIGW_ADMIN_TOKEN set, a call needs `authorization: Bearer <that token>`;
  with none set, only loopback peers may call (an admin port left open by accident must not
  hand out where the telemetry goes).
- Completion: with AIGW_API_KEYS set (comma-separated), a call needs `authorization: Bearer
  <one of them>`; with none set, Completion is open (run it behind your own edge auth).

The scheme is case-insensitive (RFC 7235: `bearer`, `BEARER` work too), the token is not.
A missing or unknown token is UNAUTHENTICATED; a valid client key on AdminService is
PERMISSION_DENIED — the caller is known, just not an admin. Tokens are compared in constant
time, against every candidate, so timing reveals neither a token nor which list it is in.
Health and reflection stay open, as probes and grpcurl expect.
"""

from __future__ import annotations

import contextvars
import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import unquote

import grpc

__all__ = ["AuthInterceptor", "admin_principal", "is_loopback_peer", "parse_api_keys"]

# Who is making the current admin call, for the config history: the admin token's name, or
# the loopback peer's address when no token is configured. Never the token itself.
_PRINCIPAL: contextvars.ContextVar[str] = contextvars.ContextVar("aigw_admin_principal", default="")
ADMIN_TOKEN_NAME = "admin"  # noqa: S105 - the name the history shows, not a token


def admin_principal() -> str:
    return _PRINCIPAL.get()


def _peer_address(peer: str) -> str:
    """`ipv4:127.0.0.1:5000` → `127.0.0.1:5000` (gRPC core URI-escapes IPv6 peers)."""
    return unquote(peer.partition(":")[2]) or peer


_ADMIN_PREFIX = "/aigw.v1.AdminService/"
_COMPLETION_PREFIX = "/aigw.v1.Completion/"


def is_loopback_peer(peer: str) -> bool:
    kind, _, rest = peer.partition(":")
    if kind == "unix":
        return True
    if kind not in ("ipv4", "ipv6"):
        return False
    # gRPC core reports IPv6 peers URI-escaped: "ipv6:%5B::1%5D:port" (grpc/grpc#30852).
    host = unquote(rest).rpartition(":")[0].strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def parse_api_keys(text: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in text.split(",") if k.strip())


def _bearer_token(value: str | bytes) -> bytes:
    """The token of `Bearer <token>`, any case of the scheme; b"" when it is not one."""
    raw = value.encode() if isinstance(value, str) else bytes(value)
    scheme, sep, token = raw.partition(b" ")
    if not sep or scheme.lower() != b"bearer":
        return b""  # matches no candidate: none is empty
    return token.lstrip(b" ")


def _matches(given: bytes, candidates: Iterable[bytes]) -> bool:
    found = False
    for candidate in candidates:
        found |= hmac.compare_digest(given, candidate)
    return found


def _deny(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    if handler.unary_stream is not None:

        async def deny_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(code, message)
            yield  # pragma: no cover - makes this an async generator

        return grpc.unary_stream_rpc_method_handler(
            deny_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.unary_unary_rpc_method_handler(
        deny,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, admin_token: str, api_keys: tuple[str, ...] = ()) -> None:
        # The tokens alone: the scheme is checked apart, case-insensitively.
        self._admin = (admin_token.encode(),) if admin_token else ()
        self._clients = tuple(k.encode() for k in api_keys if k)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None:
            return handler
        admin = method.startswith(_ADMIN_PREFIX)
        if not admin and not (self._clients and method.startswith(_COMPLETION_PREFIX)):
            return handler
        metadata = handler_call_details.invocation_metadata or ()  # type: ignore[attr-defined]
        given = next((v for k, v in metadata if k == "authorization"), "")
        token = _bearer_token(given)
        is_admin = _matches(token, self._admin)
        is_client = _matches(token, self._clients)
        if not admin:
            if is_client or is_admin:
                return handler
            return _deny(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "authorization: Completion needs 'Bearer <API key>' (one of AIGW_API_KEYS)",
            )
        if self._admin:
            if is_admin:
                return _as_principal(handler, ADMIN_TOKEN_NAME)
            if is_client:
                return _deny(
                    handler,
                    grpc.StatusCode.PERMISSION_DENIED,
                    "authorization: this API key may call Completion only, not AdminService",
                )
            return _deny(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "authorization: AdminService needs 'Bearer <AIGW_ADMIN_TOKEN>'",
            )
        if is_client:
            return _deny(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                "authorization: this API key may call Completion only, not AdminService",
            )
        return _loopback_only(handler)


def _loopback_only(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The peer is known only inside the call, so the check wraps the handler."""
    behavior = handler.unary_unary
    assert behavior is not None, "AdminService methods are unary"

    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        peer = context.peer()
        if not is_loopback_peer(peer):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "AdminService accepts only loopback callers when AIGW_ADMIN_TOKEN is unset",
            )
        _PRINCIPAL.set(_peer_address(peer))
        return await behavior(request, context)

    return grpc.unary_unary_rpc_method_handler(
        guarded,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _as_principal(handler: grpc.RpcMethodHandler, name: str) -> grpc.RpcMethodHandler:
    behavior = handler.unary_unary
    assert behavior is not None, "AdminService methods are unary"

    async def named(request: Any, context: grpc.aio.ServicerContext) -> Any:
        _PRINCIPAL.set(name)
        return await behavior(request, context)

    return grpc.unary_unary_rpc_method_handler(
        named,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


# A serving process forwards AdminService calls, already authorised, to the telemetry process
# over a socket only this gateway's processes can open; this carries who made them.
PRINCIPAL_METADATA = "x-aigw-principal"


class ForwardedPrincipal(grpc.aio.ServerInterceptor):
    """On the telemetry process's private socket only: the caller is the serving process that
    checked the call, and `x-aigw-principal` names who it checked."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or not method.startswith(_ADMIN_PREFIX):
            return handler
        metadata = handler_call_details.invocation_metadata or ()  # type: ignore[attr-defined]
        name = next((v for k, v in metadata if k == PRINCIPAL_METADATA), "")
        return _as_principal(handler, name if isinstance(name, str) else "")
