"""AdminService GetOtelConfig/SetOtelConfig over real gRPC: a fresh gateway's answer,
sections and versions (optimistic concurrency), and header values masked in every answer while
the stored secrets keep arriving at a real OTLP receiver.
"""

from __future__ import annotations

import asyncio

import grpc
from aigw.v1 import admin_pb2, otel_config_pb2

from admin.otel_config import MASK
from gateway.server import OTEL_CONFIG_FILE
from tests.clients import client_for, rejected
from tests.otel_config_support import (
    HTTP_URL,
    SECRET_AUTH,
    SECRET_KEY,
    TRACE_ID,
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
from tests.otlp_receivers import HttpOtlpReceiver

# --- Get on a fresh gateway ---------------------------------------------------------------------


async def test_get_on_a_fresh_gateway_answers_both_sections_off_with_defaults(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway()
    channel, c = await client_for(gw)
    async with channel:
        got = await c.get()
    assert got.version == 0
    assert got.config.HasField("traces")
    assert got.config.HasField("metrics")
    assert got.HasField("health")
    assert got.health.HasField("traces")
    assert got.health.HasField("metrics")
    for name in ("traces", "metrics"):
        section = getattr(got.config, name)
        assert section.enabled is False, name
        assert section.protocol == otel_config_pb2.PROTOCOL_HTTP, name
        assert section.encoding == otel_config_pb2.ENCODING_PROTO, name
        assert section.compression == otel_config_pb2.COMPRESSION_NONE, name
        assert section.endpoint == "", name
        assert dict(section.headers) == {}, name
        assert section.timeout == dur(5), name
    assert got.config.metrics.export_interval == dur(60)
    assert got.config.metrics.temporality == otel_config_pb2.TEMPORALITY_CUMULATIVE
    # Metrics-only fields are not shown on traces.
    assert not got.config.traces.HasField("export_interval")
    assert got.config.traces.temporality == otel_config_pb2.TEMPORALITY_UNSPECIFIED
    # Nothing exported or failed yet.
    for health in (got.health.traces, got.health.metrics):
        assert not health.HasField("last_success_time")
        assert not health.HasField("last_error_time")
        assert (health.exported, health.failed, health.last_error) == (0, 0, "")
    assert not (gw.state_dir / OTEL_CONFIG_FILE).exists()  # nothing to persist yet


# --- sections, versions, optimistic concurrency --------------------------------------------------


async def test_a_section_left_out_is_unchanged_and_each_set_adds_one_to_the_version(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway()
    channel, c = await client_for(gw)
    async with channel:
        one = await c.set(traces_only(endpoint=HTTP_URL, timeout=dur(3)))
        assert one.version == 1
        assert one.config.traces.endpoint == HTTP_URL
        assert one.config.metrics.endpoint == ""
        two = await c.set(metrics_only(endpoint="http://127.0.0.1:4318/v1/metrics"))
        assert two.version == 2
        assert two.config.traces == one.config.traces  # left out: unchanged
        assert two.config.metrics.endpoint == "http://127.0.0.1:4318/v1/metrics"
        # A section sent replaces the stored one whole: fields left out take their defaults.
        three = await c.set(traces_only(endpoint=HTTP_URL))
        assert three.version == 3
        assert three.config.traces.timeout == dur(5)
        assert three.config.metrics == two.config.metrics
        got = await c.get()
        assert (got.config, got.version) == (three.config, three.version)
        # Set answers what Get answers.
        assert three.HasField("health")


async def test_expected_version_guards_against_lost_updates(start_gateway: StartGateway) -> None:
    gw = await start_gateway()
    channel, c = await client_for(gw)
    async with channel:
        await c.set(traces_only(endpoint=HTTP_URL))
        await c.set(traces_only(endpoint=HTTP_URL, timeout=dur(4)))
        before = await c.get()
        assert before.version == 2
        for stale in (0, 1, 3, 99):
            details = await rejected(
                c.set(traces_only(endpoint="http://127.0.0.1:1/v1/traces"), expected_version=stale),
                grpc.StatusCode.FAILED_PRECONDITION,
            )
            assert "expected_version" in details
            after = await c.get()
            assert (after.config, after.version) == (before.config, before.version), stale
        applied = await c.set(
            traces_only(endpoint="http://127.0.0.1:2/v1/traces"), expected_version=2
        )
        assert applied.version == 3
        assert applied.config.traces.endpoint == "http://127.0.0.1:2/v1/traces"

        # Two operators editing the same version at once: exactly one wins.
        results = await asyncio.gather(
            c.set(traces_only(endpoint="http://127.0.0.1:3/v1/traces"), expected_version=3),
            c.set(traces_only(endpoint="http://127.0.0.1:4/v1/traces"), expected_version=3),
            return_exceptions=True,
        )
        wins = [r for r in results if isinstance(r, admin_pb2.SetOtelConfigResponse)]
        losses = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(wins) == 1
        assert len(losses) == 1
        assert losses[0].code() is grpc.StatusCode.FAILED_PRECONDITION
        final = await c.get()
        assert final.version == 4
        assert final.config.traces.endpoint == wins[0].config.traces.endpoint


# --- masking --------------------------------------------------------------------------------------


async def test_header_values_are_masked_and_names_lowercased(start_gateway: StartGateway) -> None:
    gw = await start_gateway()
    channel, c = await client_for(gw)
    async with channel:
        reply = await c.set(
            Cfg(
                traces=E(
                    endpoint=HTTP_URL,
                    headers={"Authorization": SECRET_AUTH, "X-API-Key": SECRET_KEY},
                ),
                metrics=E(endpoint="http://127.0.0.1:4318/v1/metrics", headers={"X-Tenant": "t"}),
            )
        )
        got = await c.get()
    for response in (reply, got):
        assert dict(response.config.traces.headers) == {"authorization": MASK, "x-api-key": MASK}
        assert dict(response.config.metrics.headers) == {"x-tenant": MASK}
        assert_no_secret(response)
    assert gw.otel is not None
    assert gw.otel.settings.traces.header_dict == {
        "authorization": SECRET_AUTH,
        "x-api-key": SECRET_KEY,
    }


async def test_masked_values_sent_back_keep_the_stored_secrets_on_the_wire(
    start_gateway: StartGateway, http_rx: HttpOtlpReceiver
) -> None:
    gw = await start_gateway()
    channel, c = await client_for(gw)
    async with channel:
        await c.set(
            traces_only(
                endpoint=http_rx.url("/old/v1/traces"),
                headers={"Authorization": SECRET_AUTH, "X-API-Key": SECRET_KEY, "x-tenant": "a"},
            )
        )
        # Get → edit only the endpoint (and one header) → Set, never touching the secrets.
        edited = (await c.get()).config
        assert edited.traces.headers["authorization"] == MASK
        edited.traces.enabled = True
        edited.traces.endpoint = http_rx.traces_url
        edited.traces.headers["x-tenant"] = "b"
        # The whole Get answer goes back, metrics section included: a round trip is valid.
        reply = await c.set(edited)
        assert reply.version == 2
        assert dict(reply.config.traces.headers) == {
            "authorization": MASK,
            "x-api-key": MASK,
            "x-tenant": MASK,
        }
        await c.complete(TRACE_ID)
        await flush_spans(gw)
        arrived = received_headers(http_rx, "/v1/traces")
        assert arrived, http_rx.requests
        for headers in arrived:
            assert headers["authorization"] == SECRET_AUTH
            assert headers["x-api-key"] == SECRET_KEY
            assert headers["x-tenant"] == "b"
        assert MASK not in str(arrived)
        assert (TRACE_ID, "chat echo-1") in {(t, n) for t, _, n in http_rx.spans()}
        assert received_headers(http_rx, "/old/v1/traces") == []

        # Dropping a header: leave it out of the section.
        del edited.traces.headers["x-api-key"]
        reply = await c.set(edited)
        assert dict(reply.config.traces.headers) == {"authorization": MASK, "x-tenant": MASK}
        http_rx.clear()
        await c.complete()
        await flush_spans(gw)
        arrived = received_headers(http_rx, "/v1/traces")
        assert arrived
        assert all("x-api-key" not in h for h in arrived)
        assert all(h["authorization"] == SECRET_AUTH for h in arrived)
