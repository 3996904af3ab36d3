"""Who may call what: the admin token, client API keys, loopback when no admin token is set.

Real gateways on 127.0.0.1 (conftest's gateway_factory, with an explicit `env`), real gRPC
clients. A
non-loopback peer cannot be produced on 127.0.0.1, so `is_loopback_peer` is unit-tested on the
peer strings gRPC hands the servicer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from aigw.v1 import admin_pb2, admin_pb2_grpc, completion_pb2_grpc, otel_config_pb2

from gateway.auth import is_loopback_peer
from tests.conftest import GatewayFactory, chat

TOKEN = "adm1n-t0ken-5f3c9e7a"


def admin_calls(stub: admin_pb2_grpc.AdminServiceStub) -> dict[str, Callable[..., Any]]:
    """One harmless call per AdminService method (each answers OK when authorised)."""
    return {
        "GetOtelConfig": lambda **kw: stub.GetOtelConfig(admin_pb2.GetOtelConfigRequest(), **kw),
        "SetOtelConfig": lambda **kw: stub.SetOtelConfig(
            admin_pb2.SetOtelConfigRequest(
                config=otel_config_pb2.OtelConfig(
                    traces=otel_config_pb2.ExporterConfig(endpoint="http://127.0.0.1:9/v1/traces")
                )
            ),
            **kw,
        ),
        "ListTraces": lambda **kw: stub.ListTraces(admin_pb2.ListTracesRequest(), **kw),
    }


async def test_with_a_token_admin_calls_need_the_bearer_token(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(env={"AIGW_ADMIN_TOKEN": TOKEN})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as ch:
        stub = admin_pb2_grpc.AdminServiceStub(ch)
        refused_metadata: dict[str, list[tuple[str, str]]] = {
            "no authorization": [],
            "wrong token": [("authorization", "Bearer not-the-token")],
            "token without the Bearer scheme": [("authorization", TOKEN)],
            "token with a suffix": [("authorization", f"Bearer {TOKEN}x")],
            "empty bearer": [("authorization", "Bearer ")],
        }
        for name, call in admin_calls(stub).items():
            for case, metadata in refused_metadata.items():
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(metadata=metadata, timeout=5)
                assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED, (name, case)
                assert TOKEN not in (info.value.details() or ""), (name, case)

        # Nothing a refused Set carried was applied.
        good = [("authorization", f"Bearer {TOKEN}")]
        current = await stub.GetOtelConfig(
            admin_pb2.GetOtelConfigRequest(), metadata=good, timeout=5
        )
        assert current.version == 0
        assert current.config.traces.endpoint == ""

        for call in admin_calls(stub).values():
            await call(metadata=good, timeout=5)  # no error: authorised
        # A TestOtelConfig and a GetTrace that pass auth reach the servicer (its own errors).
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetTrace(admin_pb2.GetTraceRequest(trace_id="0" * 32), metadata=good)
        assert info.value.code() is grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.TestOtelConfig(admin_pb2.TestOtelConfigRequest(), metadata=good)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        for rpc, request in (
            (stub.GetTrace, admin_pb2.GetTraceRequest(trace_id="0" * 32)),
            (stub.TestOtelConfig, admin_pb2.TestOtelConfigRequest()),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await rpc(request, timeout=5)
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_with_a_token_completion_calls_need_none(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(env={"AIGW_ADMIN_TOKEN": TOKEN})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as ch:
        completion = completion_pb2_grpc.CompletionStub(ch)
        reply = await completion.Complete(chat("no token here"), timeout=5)
        assert reply.content == "no token here"
        chunks = [c async for c in completion.StreamComplete(chat("a b"), timeout=5)]
        assert "".join(c.delta for c in chunks) == "a b"


async def test_without_a_token_loopback_callers_are_allowed(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(env={})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as ch:
        stub = admin_pb2_grpc.AdminServiceStub(ch)
        for call in admin_calls(stub).values():
            await call(timeout=5)
        # A stray authorization header does not matter when no token is configured.
        got = await stub.GetOtelConfig(
            admin_pb2.GetOtelConfigRequest(),
            metadata=[("authorization", "Bearer whatever")],
            timeout=5,
        )
        assert got.version == 1  # the SetOtelConfig above was applied


@pytest.mark.parametrize(
    ("peer", "loopback"),
    [
        ("ipv4:127.0.0.1:5", True),
        ("ipv4:127.0.0.2:50051", True),  # all of 127/8 is loopback
        ("ipv6:[::1]:5", True),
        ("ipv6:[::ffff:127.0.0.1]:5", True),
        ("unix:/tmp/x", True),
        ("ipv4:10.0.0.1:5", False),
        ("ipv6:[2001:db8::1]:5", False),
        ("ipv6:[::ffff:10.0.0.1]:5", False),
        ("ipv4:0.0.0.0:5", False),
        ("ipv4:localhost:5", False),  # a name is not an address
        ("unknown", False),
        ("", False),
    ],
)
def test_is_loopback_peer(peer: str, loopback: bool) -> None:
    assert is_loopback_peer(peer) is loopback


def test_is_loopback_peer_accepts_the_uri_escaped_ipv6_form_grpc_reports() -> None:
    assert is_loopback_peer("ipv6:%5B::1%5D:54621") is True


CLIENT_KEYS = ("client-key-one-0123", "client-key-two-4567")


async def test_api_keys_guard_completion_and_are_not_admin_tokens(
    gateway_factory: GatewayFactory,
) -> None:
    from aigw.v1 import completion_pb2_grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tests.conftest import chat

    gw = await gateway_factory(
        env={"AIGW_ADMIN_TOKEN": TOKEN, "AIGW_API_KEYS": ",".join(CLIENT_KEYS) + ", "}
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as ch:
        completion = completion_pb2_grpc.CompletionStub(ch)
        admin = admin_pb2_grpc.AdminServiceStub(ch)

        def bearer(token: str) -> list[tuple[str, str]]:
            return [("authorization", f"Bearer {token}")]

        for meta in ([], bearer("wrong"), bearer(CLIENT_KEYS[0] + "x")):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await completion.Complete(chat(), metadata=meta, timeout=5)
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as info:
                _ = [c async for c in completion.StreamComplete(chat(), metadata=meta, timeout=5)]
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        for key in (*CLIENT_KEYS, TOKEN):
            reply = await completion.Complete(chat("ok"), metadata=bearer(key), timeout=5)
            assert reply.content == "ok"
        # A client key is a known caller, just not an admin.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await admin.GetOtelConfig(
                admin_pb2.GetOtelConfigRequest(), metadata=bearer(CLIENT_KEYS[1]), timeout=5
            )
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert CLIENT_KEYS[1] not in info.value.details()
        await admin.GetOtelConfig(
            admin_pb2.GetOtelConfigRequest(), metadata=bearer(TOKEN), timeout=5
        )
        # Probes stay open.
        health = health_pb2_grpc.HealthStub(ch)
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_client_key_cannot_use_the_loopback_admin_path(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(env={"AIGW_API_KEYS": CLIENT_KEYS[0]})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as ch:
        admin = admin_pb2_grpc.AdminServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await admin.GetOtelConfig(
                admin_pb2.GetOtelConfigRequest(),
                metadata=[("authorization", f"Bearer {CLIENT_KEYS[0]}")],
                timeout=5,
            )
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
        # Loopback with no token is still the operator at the machine.
        await admin.GetOtelConfig(admin_pb2.GetOtelConfigRequest(), timeout=5)


async def test_the_bearer_scheme_is_case_insensitive_the_token_is_not(
    gateway_factory: GatewayFactory,
) -> None:
    # RFC 7235: the auth-scheme is case-insensitive; clients send `bearer` (gRPC-Go examples,
    # some proxies) as often as `Bearer`.
    gw = await gateway_factory(env={"AIGW_ADMIN_TOKEN": TOKEN, "AIGW_API_KEYS": CLIENT_KEYS[0]})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as ch:
        admin = admin_pb2_grpc.AdminServiceStub(ch)
        completion = completion_pb2_grpc.CompletionStub(ch)
        for scheme in ("bearer", "BEARER", "bEaReR", "Bearer"):
            await admin.GetOtelConfig(
                admin_pb2.GetOtelConfigRequest(),
                metadata=[("authorization", f"{scheme} {TOKEN}")],
                timeout=5,
            )
            reply = await completion.Complete(
                chat("ok"), metadata=[("authorization", f"{scheme} {CLIENT_KEYS[0]}")], timeout=5
            )
            assert reply.content == "ok"
        refused = {
            "token in other case": f"bearer {TOKEN.upper()}",
            "another scheme": f"Basic {TOKEN}",
            "scheme glued to the token": f"bearer{TOKEN}",
            "scheme only": "bearer",
            "empty token": "bearer ",
        }
        for case, value in refused.items():
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await admin.GetOtelConfig(
                    admin_pb2.GetOtelConfigRequest(),
                    metadata=[("authorization", value)],
                    timeout=5,
                )
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED, case
            assert TOKEN not in (info.value.details() or ""), case
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await completion.Complete(
                    chat(), metadata=[("authorization", value.replace(TOKEN, CLIENT_KEYS[0]))]
                )
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED, case
