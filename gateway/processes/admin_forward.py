"""AdminService in a serving process: every call forwarded to the telemetry process.

There is one control plane per gateway (one config manager, one trace store, one set of
exporters), in the telemetry process, so an admin call that lands on any serving process acts
for all of them. The serving process has already traced and authorised the call (its
interceptors run first); it forwards the request's bytes unparsed with who made it
(`x-aigw-principal`, for the config history) over the private socket, and relays the answer
or the status.

A ListTraces right after a call sees it whichever serving process took either: the telemetry
process waits for every serving process's records first (`TelemetryIngest.settle`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import grpc
from aigw.v1 import admin_pb2

from gateway.auth import PRINCIPAL_METADATA, admin_principal
from gateway.processes.intake import CHANNEL_OPTIONS, socket_target

__all__ = ["AdminForwarder"]

_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
_DEFAULT_TIMEOUT: Final = 60.0
# Metadata a caller may not pass through: ours, and what gRPC itself sets.
_NOT_FORWARDED: Final = frozenset({PRINCIPAL_METADATA, "authorization", "user-agent"})


class AdminForwarder:
    def __init__(self, socket_path: str) -> None:
        self._channel = grpc.aio.insecure_channel(socket_target(socket_path), CHANNEL_OPTIONS)

    def add_to(self, server: grpc.aio.Server) -> None:
        handlers = {
            method.name: grpc.unary_unary_rpc_method_handler(self._forwarder(method.name))
            for method in _SERVICE.methods
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(_SERVICE.full_name, handlers),)
        )

    def _forwarder(self, name: str) -> Callable[[bytes, grpc.aio.ServicerContext], object]:
        call = self._channel.unary_unary(f"/{_SERVICE.full_name}/{name}")

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            metadata = [
                (k, v)
                for k, v in (context.invocation_metadata() or ())
                if k not in _NOT_FORWARDED and not k.startswith("grpc-")
            ]
            metadata.append((PRINCIPAL_METADATA, admin_principal()))
            remaining = context.time_remaining()
            try:
                return await call(  # type: ignore[no-any-return]
                    request,
                    metadata=metadata,
                    timeout=_DEFAULT_TIMEOUT if remaining is None else max(remaining, 0.001),
                )
            except grpc.aio.AioRpcError as e:
                code = e.code()
                details = e.details() or ""
                if code is grpc.StatusCode.UNAVAILABLE:
                    details = f"the gateway's telemetry process is unavailable ({details})"
                await context.abort(code, details)
                raise AssertionError("unreachable") from None

        return forward

    async def close(self) -> None:
        await self._channel.close()
