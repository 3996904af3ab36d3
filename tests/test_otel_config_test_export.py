"""AdminService TestOtelConfig against real receivers (one dry-run export, nothing changed),
and secrets never leaving through any admin response.
"""

from __future__ import annotations

import json

import grpc
import pytest
from aigw.v1 import admin_pb2, otel_config_pb2
from google.protobuf.message import Message

from admin.otel_config import MASK
from tests.clients import client_for, rejected
from tests.otel_config_support import (
    GRPC,
    HTTP_URL,
    SECRET_AUTH,
    SECRET_AUTH_TOKEN,
    SECRET_KEY,
    Cfg,
    E,
    StartGateway,
    assert_no_secret,
    dur,
    flush_spans,
    metrics_only,
    received_headers,
    traces_only,
)
from tests.otlp_receivers import GrpcOtlpReceiver, HttpOtlpReceiver, refusing_endpoint

# --- TestOtelConfig -----------------------------------------------------------------------------


async def test_test_export_reports_the_backend_answer_and_changes_nothing(
    start_gateway: StartGateway, http_rx: HttpOtlpReceiver, grpc_rx: GrpcOtlpReceiver
) -> None:
    gw = await start_gateway()
    channel, c = await client_for(gw)
    async with channel:
        # Stored disabled at the receiver's origin, so Test may reuse the secret behind the mask.
        await c.set(
            traces_only(
                enabled=False,
                endpoint=http_rx.url("/other/path"),
                headers={"x-api-key": SECRET_KEY},
            )
        )
        before = await c.get()
        # The mask never carries a secret to another origin: that would hand it to whoever
        # controls the new endpoint.
        with pytest.raises(grpc.aio.AioRpcError) as elsewhere:
            await c.test(
                Cfg(traces=E(endpoint="http://127.0.0.1:9/v1/traces", headers={"x-api-key": MASK}))
            )
        assert elsewhere.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "traces.headers['x-api-key']" in elsewhere.value.details()

        # 200: success, and a real export reached the receiver, stored secret behind the mask.
        ok = await c.test(
            Cfg(
                traces=E(endpoint=http_rx.traces_url, headers={"x-api-key": MASK}),
                metrics=E(endpoint=http_rx.metrics_url),
            )
        )
        assert ok.traces.success is True, ok
        assert ok.traces.reason == ""
        assert ok.traces.http_status == 200
        assert ok.metrics.success is True, ok
        assert ok.traces.HasField("elapsed")
        assert [n for _, _, n in http_rx.spans()] == ["aigw.otel.test"]
        assert received_headers(http_rx, "/v1/traces")[0]["x-api-key"] == SECRET_KEY
        assert "x-api-key" not in received_headers(http_rx, "/v1/metrics")[0]

        # Only the sections sent are tested.
        only_metrics = await c.test(metrics_only(endpoint=http_rx.metrics_url))
        assert not only_metrics.HasField("traces")
        assert only_metrics.metrics.success is True

        # 401 with the backend's words.
        http_rx.respond_with(401, "invalid API key")
        for encoding in (otel_config_pb2.ENCODING_PROTO, otel_config_pb2.ENCODING_JSON):
            denied = await c.test(
                Cfg(
                    traces=E(endpoint=http_rx.traces_url, encoding=encoding),
                    metrics=E(endpoint=http_rx.metrics_url, encoding=encoding),
                )
            )
            for result in (denied.traces, denied.metrics):
                assert result.success is False, (encoding, result)
                assert result.reason == "http_4xx"
                assert result.http_status == 401
                assert result.grpc_code == ""
                assert "invalid API key" in result.message
        http_rx.respond_ok()

        # gRPC backend refusing the credentials.
        grpc_rx.fail_with(grpc.StatusCode.UNAUTHENTICATED, "bad token")
        grpc_denied = await c.test(
            Cfg(
                traces=E(protocol=GRPC, endpoint=grpc_rx.endpoint),
                metrics=E(protocol=GRPC, endpoint=grpc_rx.endpoint),
            )
        )
        for result in (grpc_denied.traces, grpc_denied.metrics):
            assert result.success is False, result
            assert result.grpc_code == "UNAUTHENTICATED"
            assert result.reason == "grpc_unauthenticated"
            assert result.http_status == 0
            assert "bad token" in result.message
        grpc_rx.respond_ok()
        grpc_ok = await c.test(traces_only(protocol=GRPC, endpoint=grpc_rx.endpoint))
        assert grpc_ok.traces.success is True, grpc_ok

        # Nobody listening. A 300 ms budget is shorter than any exporter's first retry backoff,
        # so the outcome is the refusal itself, never a retry cut off by the deadline ("timeout").
        quick = dur(0, 300_000_000)
        with refusing_endpoint("/v1/traces") as url:
            base = url.removesuffix("/v1/traces")
            refused = await c.test(
                Cfg(
                    traces=E(endpoint=url, timeout=quick),
                    metrics=E(protocol=GRPC, endpoint=base, timeout=quick),
                )
            )
            refused_json = await c.test(
                traces_only(endpoint=url, encoding=otel_config_pb2.ENCODING_JSON, timeout=quick)
            )
        for result in (refused.traces, refused.metrics, refused_json.traces):
            assert result.success is False, result
            assert result.reason == "connection_refused", result
            assert result.http_status == 0

        after = await c.get()
        assert (after.config, after.version) == (before.config, before.version)
        assert after.config.traces.endpoint == before.config.traces.endpoint


async def test_test_export_rejects_an_invalid_request(start_gateway: StartGateway) -> None:
    gw = await start_gateway()
    channel, c = await client_for(gw)
    async with channel:
        for config, path in [
            (Cfg(), "config"),
            (traces_only(), "traces.endpoint"),
            (
                traces_only(
                    protocol=GRPC,
                    encoding=otel_config_pb2.ENCODING_JSON,
                    endpoint="http://127.0.0.1:4317",
                ),
                "traces.encoding",
            ),
            (metrics_only(endpoint=HTTP_URL, headers={"authorization": MASK}), "metrics.headers["),
        ]:
            details = await rejected(c.test(config), grpc.StatusCode.INVALID_ARGUMENT)
            assert path in details, (path, details)
        assert (await c.get()).version == 0


async def test_a_secret_echoed_by_the_backend_is_redacted(
    start_gateway: StartGateway, http_rx: HttpOtlpReceiver, grpc_rx: GrpcOtlpReceiver
) -> None:
    gw = await start_gateway()
    channel, c = await client_for(gw)
    async with channel:
        await c.set(
            traces_only(endpoint=http_rx.traces_url, headers={"authorization": SECRET_AUTH})
        )
        http_rx.respond_with(401, f'invalid API key "{SECRET_AUTH}" (token {SECRET_AUTH_TOKEN})')
        grpc_rx.fail_with(grpc.StatusCode.PERMISSION_DENIED, f"key {SECRET_KEY} revoked")
        for encoding in (otel_config_pb2.ENCODING_PROTO, otel_config_pb2.ENCODING_JSON):
            reply = await c.test(
                Cfg(
                    # The stored secret, behind the mask.
                    traces=E(
                        endpoint=http_rx.traces_url,
                        encoding=encoding,
                        headers={"authorization": MASK},
                    ),
                    # A secret given in the request itself.
                    metrics=E(
                        endpoint=http_rx.metrics_url,
                        encoding=encoding,
                        headers={"authorization": SECRET_AUTH},
                    ),
                )
            )
            for result in (reply.traces, reply.metrics):
                assert result.success is False
                assert result.http_status == 401
                assert "invalid API key" in result.message
                assert "[REDACTED]" in result.message
            assert_no_secret(reply)
        grpc_reply = await c.test(
            metrics_only(
                protocol=GRPC, endpoint=grpc_rx.endpoint, headers={"x-api-key": SECRET_KEY}
            )
        )
        assert grpc_reply.metrics.grpc_code == "PERMISSION_DENIED"
        assert "revoked" in grpc_reply.metrics.message
        assert_no_secret(grpc_reply)


async def test_secrets_never_appear_in_any_admin_response(
    start_gateway: StartGateway, http_rx: HttpOtlpReceiver
) -> None:
    gw = await start_gateway()
    responses: list[Message] = []
    channel, c = await client_for(gw)
    async with channel:
        responses.append(
            await c.set(
                Cfg(
                    traces=E(
                        enabled=True,
                        endpoint=http_rx.traces_url,
                        headers={"authorization": SECRET_AUTH, "x-api-key": SECRET_KEY},
                    ),
                    metrics=E(
                        endpoint=http_rx.metrics_url,
                        headers={"authorization": SECRET_AUTH, "x-api-key": SECRET_KEY},
                    ),
                )
            )
        )
        responses.append(await c.get())
        # The backend rejects the real exports and echoes the key: health must not carry it.
        http_rx.respond_with(
            403,
            json.dumps({"message": f"key {SECRET_KEY} / {SECRET_AUTH} denied"}),
            content_type="application/json",
        )
        await c.complete()
        await flush_spans(gw)
        responses.append(got := await c.get())
        assert got.health.traces.failed > 0
        assert got.health.traces.last_error.startswith("http_4xx")
        assert "denied" in got.health.traces.last_error
        responses.append(await c.test(Cfg(traces=got.config.traces, metrics=got.config.metrics)))
        # A rejected Set that carries secrets: the error names headers, never values.
        details = await rejected(
            c.set(
                traces_only(
                    endpoint="nope", headers={"authorization": SECRET_AUTH, "x y": SECRET_KEY}
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert_no_secret(details)
        # A Set that only moves the endpoint, secrets kept behind masks.
        edited = got.config
        edited.traces.endpoint = http_rx.url("/moved/v1/traces")
        responses.append(await c.set(edited))
        responses.append(await c.get())
        listed = await c.admin.ListTraces(admin_pb2.ListTracesRequest(page_size=100), timeout=5)
        responses.append(listed)
        for summary in listed.traces[:10]:
            responses.append(
                await c.admin.GetTrace(admin_pb2.GetTraceRequest(trace_id=summary.trace_id))
            )
    for response in responses:
        assert_no_secret(response)


async def test_credentials_in_a_malformed_url_are_not_echoed(start_gateway: StartGateway) -> None:
    gw = await start_gateway()
    channel, c = await client_for(gw)
    async with channel:
        for url in (
            "http://user:pa55-w0rd-x@127.0.0.1:4318/v1/traces",  # well-formed: not echoed
            "user:pa55-w0rd-x@127.0.0.1:4318/v1/traces",  # no scheme
            "http://user:pa55-w0rd-x@/v1/traces",  # no host
        ):
            details = await rejected(
                c.set(traces_only(endpoint=url)), grpc.StatusCode.INVALID_ARGUMENT
            )
            assert "traces.endpoint" in details
            assert "pa55-w0rd-x" not in details, details
