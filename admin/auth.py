"""Who may call AdminService.

With AIGW_ADMIN_TOKEN set, a call needs `authorization: Bearer <token>` (compared in constant
time) or it is UNAUTHENTICATED. With no token set, only loopback peers may call, and others get
PERMISSION_DENIED: an admin port left open by accident must not hand out the OTLP credentials'
destination. Completion calls are not affected.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import grpc

__all__ = ["AdminAuthInterceptor", "is_loopback_peer"]

_ADMIN_PREFIX = "/aigw.v1.AdminService/"


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


def _deny(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(
        deny,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class AdminAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode() if token else b""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or not method.startswith(_ADMIN_PREFIX):
            return handler
        if self._expected:
            metadata = handler_call_details.invocation_metadata or ()  # type: ignore[attr-defined]
            given = next((v for k, v in metadata if k == "authorization"), "")
            given_bytes = given.encode() if isinstance(given, str) else bytes(given)
            if not hmac.compare_digest(given_bytes, self._expected):
                return _deny(
                    handler,
                    grpc.StatusCode.UNAUTHENTICATED,
                    "authorization: AdminService needs 'Bearer <AIGW_ADMIN_TOKEN>'",
                )
            return handler
        return _loopback_only(handler)


def _loopback_only(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The peer is known only inside the call, so the check wraps the handler."""
    behavior = handler.unary_unary
    assert behavior is not None, "AdminService methods are unary"

    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not is_loopback_peer(context.peer()):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "AdminService accepts only loopback callers when AIGW_ADMIN_TOKEN is unset",
            )
        return await behavior(request, context)

    return grpc.unary_unary_rpc_method_handler(
        guarded,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
