"""AdminService from a non-loopback address, end to end, inside a network namespace.

The gateway listens on 0.0.0.0 and clients reach it at 198.18.0.1 — a benchmark-range
address that exists only inside a network namespace this test creates (`unshare --net`), on
that namespace's own loopback interface, so no packet leaves it and the host's network is not
touched. To the gateway such a client is not loopback (`ipv4:198.18.0.1:…`), which is the
case `is_loopback_peer` decides and test_admin_auth.py can only feed it strings for.

The pytest side runs this module as a script in the namespace (`python -m
tests.test_admin_remote`); the script starts the gateways, makes the calls, and prints what it
saw as JSON for the test to judge.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
import pytest
from aigw.v1 import admin_pb2, admin_pb2_grpc, completion_pb2_grpc, otel_config_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import chat
from tests.processes import start_gateway_process, stop_process

REMOTE = "198.18.0.1"  # RFC 2544 benchmark range: never anyone's real host
TOKEN = "remote-adm1n-t0ken-8c2e"
REPO = Path(__file__).resolve().parent.parent
# No proxy may carry these calls anywhere: gRPC honours http_proxy unless told not to.
_OPTIONS = [("grpc.enable_http_proxy", 0)]


# --- the script, run inside the namespace ----------------------------------------------------


def _code(e: grpc.aio.AioRpcError) -> list[str]:
    return [e.code().name, e.details() or ""]


async def _admin_calls(address: str, metadata: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Each AdminService method from `address`: ["OK", ""] or [code name, details]."""
    section = otel_config_pb2.ExporterConfig(endpoint="http://127.0.0.1:9/v1/traces")
    config = otel_config_pb2.OtelConfig(traces=section)
    async with grpc.aio.insecure_channel(address, options=_OPTIONS) as ch:
        stub = admin_pb2_grpc.AdminServiceStub(ch)
        kw = {"metadata": metadata, "timeout": 15}
        calls = {
            "GetOtelConfig": lambda: stub.GetOtelConfig(admin_pb2.GetOtelConfigRequest(), **kw),
            "SetOtelConfig": lambda: stub.SetOtelConfig(
                admin_pb2.SetOtelConfigRequest(config=config), **kw
            ),
            "TestOtelConfig": lambda: stub.TestOtelConfig(
                admin_pb2.TestOtelConfigRequest(config=config), **kw
            ),
            "ListTraces": lambda: stub.ListTraces(admin_pb2.ListTracesRequest(), **kw),
            "GetTrace": lambda: stub.GetTrace(admin_pb2.GetTraceRequest(trace_id="1" * 32), **kw),
        }
        out: dict[str, list[str]] = {}
        for name, call in calls.items():
            try:
                await call()
                out[name] = ["OK", ""]
            except grpc.aio.AioRpcError as e:
                out[name] = _code(e)
        return out


async def _open_calls(address: str) -> dict[str, list[str]]:
    """What stays open to anyone: Completion (no API keys set) and health."""
    async with grpc.aio.insecure_channel(address, options=_OPTIONS) as ch:
        out: dict[str, list[str]] = {}
        try:
            reply = await completion_pb2_grpc.CompletionStub(ch).Complete(
                chat("from afar"), timeout=10
            )
            out["Complete"] = ["OK", reply.content]
        except grpc.aio.AioRpcError as e:
            out["Complete"] = _code(e)
        health = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        out["Health"] = ["OK", health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)]
        return out


async def _config_version(address: str, metadata: list[tuple[str, str]]) -> int:
    async with grpc.aio.insecure_channel(address, options=_OPTIONS) as ch:
        got = await admin_pb2_grpc.AdminServiceStub(ch).GetOtelConfig(
            admin_pb2.GetOtelConfigRequest(), metadata=metadata, timeout=10
        )
        return got.version


async def _probe(state: Path) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for mode, env in (("no_token", {}), ("token", {"AIGW_ADMIN_TOKEN": TOKEN})):
        proc, port, _ = await start_gateway_process(
            "--listen", "0.0.0.0:0", state_dir=state / mode, env=env
        )
        try:
            remote, local = f"{REMOTE}:{port}", f"127.0.0.1:{port}"
            bearer = [("authorization", f"Bearer {TOKEN}")]
            seen: dict[str, Any] = {
                "remote": await _admin_calls(remote, []),
                "remote_with_token": await _admin_calls(remote, bearer),
                "local": await _admin_calls(local, []),
                "open_remote": await _open_calls(remote),
            }
            seen["version"] = await _config_version(local, bearer if env else [])
            result[mode] = seen
        finally:
            await stop_process(proc)
        result[mode]["log"] = "".join(proc.log_lines)  # type: ignore[attr-defined]
    return result


def main() -> None:
    with tempfile.TemporaryDirectory() as state:
        print(json.dumps(asyncio.run(_probe(Path(state)))))


# --- the test ---------------------------------------------------------------------------------


def _run_in_namespace() -> dict[str, Any]:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.fail("unshare and ip (util-linux, iproute2) are needed to make the namespace")
    setup = (
        f"ip link set lo up && ip addr add {REMOTE}/32 dev lo && "
        f'exec "{sys.executable}" -m tests.test_admin_remote'
    )
    done = subprocess.run(
        ["unshare", "--net", "--", "sh", "-c", setup],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# What each AdminService method answers when it is allowed: the GetTrace of an unknown id is
# NOT_FOUND and the TestOtelConfig of a dead endpoint answers OK with the failure inside.
ALLOWED = {
    "GetOtelConfig": "OK",
    "SetOtelConfig": "OK",
    "TestOtelConfig": "OK",
    "ListTraces": "OK",
    "GetTrace": "NOT_FOUND",
}


def test_admin_from_a_non_loopback_address() -> None:
    seen = _run_in_namespace()

    # No admin token: a caller that is not on loopback is refused every admin method, …
    no_token = seen["no_token"]
    for method, (code, details) in no_token["remote"].items():
        assert code == "PERMISSION_DENIED", (method, code, details)
        assert "loopback" in details, details
    # … whatever it presents, …
    for method, (code, _) in no_token["remote_with_token"].items():
        assert code == "PERMISSION_DENIED", (method, code)
    # … and nothing it sent was applied: the only Set that took is the loopback one.
    assert no_token["version"] == 1
    # Loopback on the same listener is the operator at the machine: allowed.
    assert {m: c for m, (c, _) in no_token["local"].items()} == ALLOWED
    # Completion and health stay open to the remote caller.
    assert no_token["open_remote"] == {"Complete": ["OK", "from afar"], "Health": ["OK", "SERVING"]}

    # With a token, the address no longer matters; the token does.
    token = seen["token"]
    assert {m: c for m, (c, _) in token["remote_with_token"].items()} == ALLOWED
    for method, (code, _) in token["remote"].items():
        assert code == "UNAUTHENTICATED", (method, code)
    for method, (code, _) in token["local"].items():
        assert code == "UNAUTHENTICATED", (method, code)
    assert token["version"] == 1  # the remote Set with the token
    assert TOKEN not in token["log"]


if __name__ == "__main__":
    main()
