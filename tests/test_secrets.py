"""After a run that uses exporter headers, a provider API key, the admin token and client API
keys — with DEBUG logging on — no secret is anywhere it should not be: logs, trace store,
/metrics, admin responses, exported telemetry, and (for the caller's credentials) the requests
sent upstream."""

from __future__ import annotations

import asyncio
import signal
import stat
import urllib.request
from pathlib import Path

import grpc
import pytest
from aigw.v1 import admin_pb2, admin_pb2_grpc, completion_pb2_grpc, otel_config_pb2

from tests.conftest import chat
from tests.openai_stub import OpenAIStub
from tests.otlp_receivers import GrpcOtlpReceiver, HttpOtlpReceiver
from tests.processes import start_gateway_process, stop_process

PROVIDER_KEY = "sk-live-PROVIDERSECRET-0123456789"
EXPORT_SECRET = "otlp-EXPORTSECRET-abcdef0123456789"
ADMIN_TOKEN = "adm-ADMINSECRET-fedcba9876543210"
CLIENT_KEYS = ("ck-CLIENTSECRETONE-0011223344", "ck-CLIENTSECRETTWO-5566778899")
# The caller's credentials: never forwarded upstream either.
CALLER_SECRETS = (
    ADMIN_TOKEN,
    *CLIENT_KEYS,
    "ADMINSECRET",
    "CLIENTSECRETONE",
    "CLIENTSECRETTWO",
)
SECRETS = (PROVIDER_KEY, EXPORT_SECRET, "PROVIDERSECRET", "EXPORTSECRET", *CALLER_SECRETS)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


async def test_no_secret_leaks_anywhere(tmp_path: Path) -> None:
    config = tmp_path / "aigw.toml"
    with OpenAIStub(api_key="a-different-key") as stub:
        config.write_text(
            '[routes.echo]\nprovider = "echo"\n'
            f'[routes.gpt]\nprovider = "openai"\nmodel = "m"\nbase_url = "{stub.base_url}"\n'
            'api_key_env = "AIGW_TEST_PROVIDER_KEY"\n'
        )
        state = tmp_path / "state"
        responses: list[str] = []
        with (
            HttpOtlpReceiver() as echoing,
            HttpOtlpReceiver() as good,
            GrpcOtlpReceiver() as grpc_r,
        ):
            # A backend that echoes the credential it rejects, as some do.
            echoing.respond_with(401, f"invalid key: Bearer {EXPORT_SECRET}".encode())
            grpc_r.fail_with(grpc.StatusCode.UNAUTHENTICATED, f"bad token {EXPORT_SECRET}")
            proc, port, metrics_port = await start_gateway_process(
                "--config", str(config), "--log-level", "DEBUG", state_dir=state,
                env={
                    "AIGW_TEST_PROVIDER_KEY": PROVIDER_KEY,
                    "AIGW_ADMIN_TOKEN": ADMIN_TOKEN,
                    "AIGW_API_KEYS": ",".join(CLIENT_KEYS),
                },
            )  # fmt: skip
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                    admin = admin_pb2_grpc.AdminServiceStub(ch)
                    completion = completion_pb2_grpc.CompletionStub(ch)
                    headers = {"authorization": f"Bearer {EXPORT_SECRET}"}
                    as_admin = bearer(ADMIN_TOKEN)

                    # Refusals that carry a credential: a client key on AdminService, the
                    # admin token cut short, a client key with a suffix.
                    for metadata, code in (
                        (bearer(CLIENT_KEYS[0]), grpc.StatusCode.PERMISSION_DENIED),
                        (bearer(ADMIN_TOKEN[:-1]), grpc.StatusCode.UNAUTHENTICATED),
                        (bearer(CLIENT_KEYS[1] + "x"), grpc.StatusCode.UNAUTHENTICATED),
                    ):
                        with pytest.raises(grpc.aio.AioRpcError) as refused:
                            await admin.GetOtelConfig(
                                admin_pb2.GetOtelConfigRequest(), metadata=metadata, timeout=5
                            )
                        assert refused.value.code() is code
                        responses.append(refused.value.details())
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await completion.Complete(
                            chat("hello"), metadata=bearer(CLIENT_KEYS[0] + "x"), timeout=5
                        )
                    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
                    responses.append(refused.value.details())

                    async def set_traces(endpoint: str, protocol: int = 1) -> None:
                        section = otel_config_pb2.ExporterConfig(
                            enabled=True, endpoint=endpoint, protocol=protocol, headers=headers
                        )
                        metrics = otel_config_pb2.ExporterConfig(
                            enabled=True,
                            endpoint=endpoint.replace("traces", "metrics"),
                            protocol=protocol,
                            headers=headers,
                        )
                        reply = await admin.SetOtelConfig(
                            admin_pb2.SetOtelConfigRequest(
                                config=otel_config_pb2.OtelConfig(traces=section, metrics=metrics)
                            ),
                            metadata=as_admin,
                            timeout=10,
                        )
                        responses.append(str(reply))

                    for endpoint, protocol in (
                        (echoing.traces_url, 1),
                        (grpc_r.endpoint, 2),
                        (good.traces_url, 1),
                    ):
                        await set_traces(endpoint, protocol)
                        await completion.Complete(
                            chat("hello"), metadata=bearer(CLIENT_KEYS[0]), timeout=5
                        )
                        _ = [
                            c
                            async for c in completion.StreamComplete(
                                chat("a b"), metadata=bearer(CLIENT_KEYS[1]), timeout=5
                            )
                        ]
                        with pytest.raises(grpc.aio.AioRpcError) as info:
                            # The admin token is a valid Completion credential too.
                            await completion.Complete(
                                chat("hello", model="gpt"), metadata=as_admin, timeout=5
                            )
                        # The upstream echoed our key in its 401; the caller never sees it.
                        responses.append(info.value.details())
                        tested = await admin.TestOtelConfig(
                            admin_pb2.TestOtelConfigRequest(
                                config=otel_config_pb2.OtelConfig(
                                    traces=otel_config_pb2.ExporterConfig(
                                        endpoint=endpoint, protocol=protocol, headers=headers
                                    )
                                )
                            ),
                            metadata=as_admin,
                            timeout=15,
                        )
                        responses.append(str(tested))
                        got = await admin.GetOtelConfig(
                            admin_pb2.GetOtelConfigRequest(), metadata=as_admin, timeout=5
                        )
                        responses.append(str(got))
                    listed = await admin.ListTraces(
                        admin_pb2.ListTracesRequest(), metadata=as_admin, timeout=5
                    )
                    assert listed.traces
                    for t in listed.traces:
                        trace = await admin.GetTrace(
                            admin_pb2.GetTraceRequest(trace_id=t.trace_id),
                            metadata=as_admin,
                            timeout=5,
                        )
                        responses.append(str(trace))
                url = f"http://127.0.0.1:{metrics_port}/metrics"
                metrics_text = await asyncio.to_thread(
                    lambda: urllib.request.urlopen(url, timeout=5).read().decode()
                )
                proc.send_signal(signal.SIGTERM)
                async with asyncio.timeout(30):
                    assert await proc.wait() == 0
            finally:
                await stop_process(proc)
            exported = [r.body for r in (*echoing.requests, *good.requests)]
            exported += [r.request.SerializeToString() for r in grpc_r.requests]
        upstream_requests = stub.requests

    assert any(
        r.headers.get("authorization") == f"Bearer {PROVIDER_KEY}" for r in upstream_requests
    )
    assert good.spans(), "the good receiver got the spans"
    log = "".join(proc.log_lines)  # type: ignore[attr-defined]
    assert "401" in log or "http_4xx" in log  # the failures were logged …
    assert " DEBUG " in log  # … and DEBUG logging was really on
    # The caller's credentials stay at the gateway: nothing sent upstream carries them.
    upstream = "\n".join(
        f"{r.method} {r.path} {r.headers} {r.raw_body.decode('latin-1')}" for r in upstream_requests
    )
    for secret in CALLER_SECRETS:
        assert secret not in upstream, f"{secret!r} was forwarded upstream"
    store_bytes = b"".join(p.read_bytes() for p in state.glob("traces.db*"))
    places = {
        "log": log,
        "metrics": metrics_text,
        "admin responses": "\n".join(responses),
        "trace store": store_bytes.decode("latin-1"),
        "exported telemetry": b"".join(exported).decode("latin-1"),
    }
    for where, text in places.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked into the {where}"
    # Owner-only files: the OTEL config holds the header values by design.
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for name in ("traces.db", "otel-config.json"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
