"""AdminService's OTLP export config over real gRPC: Get/Set/Test, validation, masking,
persistence, environment seeding, and secrets never leaving through an admin response.

Every gateway here gets an explicit `env` (never os.environ, so an operator's shell cannot
change the results), and every export is checked at a real OTLP receiver: what matters is the
header value that *arrives*, not what the API claims.
"""

from __future__ import annotations

import asyncio
import json
import re
import stat
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aigw.v1 import admin_pb2, admin_pb2_grpc, completion_pb2_grpc, otel_config_pb2
from google.protobuf import duration_pb2, json_format, text_format
from google.protobuf.message import Message
from opentelemetry.proto.metrics.v1 import metrics_pb2

from admin.config_store import ConfigStoreError
from admin.otel_config import MASK, InvalidConfig
from gateway.server import OTEL_CONFIG_FILE, Gateway
from tests.conftest import GatewayFactory, chat
from tests.otlp_receivers import GrpcOtlpReceiver, HttpOtlpReceiver, refusing_endpoint

E = otel_config_pb2.ExporterConfig
Cfg = otel_config_pb2.OtelConfig
StartGateway = Callable[..., Awaitable[Gateway]]

SECRET_AUTH = "Bearer s3cret-7f1c2a9e4b"
SECRET_AUTH_TOKEN = "s3cret-7f1c2a9e4b"  # what a backend echoing "the key" would print
SECRET_KEY = "k3y-90ab12cd34ef56"
SECRETS = (SECRET_AUTH, SECRET_AUTH_TOKEN, SECRET_KEY)
TRACE_ID = "5b8aa5a2d2c872e8321cf37308d69df2"


# --- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture
def http_rx() -> Iterator[HttpOtlpReceiver]:
    with HttpOtlpReceiver() as rx:
        yield rx
    assert rx.errors == []  # no handler tracebacks


@pytest.fixture
def grpc_rx() -> Iterator[GrpcOtlpReceiver]:
    with GrpcOtlpReceiver() as rx:
        yield rx


@pytest.fixture
def start_gateway(
    http_rx: HttpOtlpReceiver, grpc_rx: GrpcOtlpReceiver, gateway_factory: GatewayFactory
) -> StartGateway:
    """conftest's gateway_factory (explicit `env`, default empty), set up after the receivers
    so that it is torn down before them: the final flush at stop must find them listening."""
    return gateway_factory


class Client:
    """Admin and Completion stubs on one channel to a gateway."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.admin = admin_pb2_grpc.AdminServiceStub(channel)
        self.completion = completion_pb2_grpc.CompletionStub(channel)

    async def get(self) -> admin_pb2.GetOtelConfigResponse:
        return await self.admin.GetOtelConfig(admin_pb2.GetOtelConfigRequest(), timeout=5)

    async def set(
        self, config: otel_config_pb2.OtelConfig, expected_version: int | None = None
    ) -> admin_pb2.SetOtelConfigResponse:
        request = admin_pb2.SetOtelConfigRequest(config=config)
        if expected_version is not None:
            request.expected_version = expected_version
        return await self.admin.SetOtelConfig(request, timeout=10)

    async def test(self, config: otel_config_pb2.OtelConfig) -> admin_pb2.TestOtelConfigResponse:
        return await self.admin.TestOtelConfig(
            admin_pb2.TestOtelConfigRequest(config=config), timeout=20
        )

    async def complete(self, trace_id: str | None = None) -> None:
        metadata = [("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01")] if trace_id else None
        await self.completion.Complete(chat("ping"), metadata=metadata, timeout=5)


async def client_for(gw: Gateway) -> tuple[grpc.aio.Channel, Client]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}")
    return channel, Client(channel)


async def rejected(call: Awaitable[Any], code: grpc.StatusCode) -> str:
    """The details of a call that must fail with `code`."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() is code, info.value.details()
    return info.value.details() or ""


def dur(seconds: int = 0, nanos: int = 0) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=seconds, nanos=nanos)


async def flush_spans(gw: Gateway) -> None:
    assert gw.telemetry is not None
    assert await asyncio.to_thread(gw.telemetry.tracer_provider.force_flush, 5_000)


def assert_no_secret(message: Message | str, secrets: tuple[str, ...] = SECRETS) -> None:
    if isinstance(message, str):
        blobs = [message.encode()]
    else:
        blobs = [
            message.SerializeToString(),
            text_format.MessageToString(message).encode(),
            json_format.MessageToJson(message).encode(),
        ]
    for secret in secrets:
        for blob in blobs:
            assert secret.encode() not in blob, f"{secret!r} leaked: {blob[:400]!r}"


def received_headers(rx: HttpOtlpReceiver, path: str) -> list[dict[str, str]]:
    return [r.headers for r in rx.requests if r.path == path]


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


# --- validation ---------------------------------------------------------------------------------

BASELINE = Cfg(
    traces=E(
        endpoint="http://127.0.0.1:4318/v1/traces",
        headers={"authorization": SECRET_AUTH},
        timeout=dur(2),
    ),
    metrics=E(
        endpoint="http://127.0.0.1:4318/v1/metrics",
        export_interval=dur(30),
        temporality=otel_config_pb2.TEMPORALITY_DELTA,
    ),
)
GRPC = otel_config_pb2.PROTOCOL_GRPC
HTTP_URL = "http://127.0.0.1:4318/v1/traces"
BAD_VALUE = "v4lue-never-echoed"


def _traces(**fields: Any) -> otel_config_pb2.OtelConfig:
    return Cfg(traces=E(**fields))


def _metrics(**fields: Any) -> otel_config_pb2.OtelConfig:
    return Cfg(metrics=E(**fields))


# (case id, config, dotted path the error must name)
INVALID: list[tuple[str, otel_config_pb2.OtelConfig, str]] = [
    (
        "json over grpc",
        _traces(protocol=GRPC, encoding=otel_config_pb2.ENCODING_JSON, endpoint="http://h:4317"),
        "traces.encoding",
    ),
    ("url without scheme", _traces(endpoint="127.0.0.1:4318/v1/traces"), "traces.endpoint"),
    ("url with ftp scheme", _traces(endpoint="ftp://127.0.0.1/v1/traces"), "traces.endpoint"),
    ("url without host", _traces(endpoint="http:///v1/traces"), "traces.endpoint"),
    ("url with only a port", _traces(endpoint="http://:4318/v1/traces"), "traces.endpoint"),
    (
        "grpc endpoint with a path",
        _traces(protocol=GRPC, endpoint="http://127.0.0.1:4317/v1/traces"),
        "traces.endpoint",
    ),
    (
        "grpc endpoint with a query",
        _metrics(protocol=GRPC, endpoint="http://127.0.0.1:4317?x=1"),
        "metrics.endpoint",
    ),
    ("port 70000", _traces(endpoint="http://127.0.0.1:70000/v1/traces"), "traces.endpoint"),
    ("port 0", _traces(endpoint="http://127.0.0.1:0/v1/traces"), "traces.endpoint"),
    ("port 65536", _metrics(endpoint="http://127.0.0.1:65536/v1/metrics"), "metrics.endpoint"),
    (
        "credentials in url",
        _traces(endpoint="http://user:pw@127.0.0.1:4318/v1/traces"),
        "traces.endpoint",
    ),
    ("unclosed IPv6 bracket", _traces(endpoint="http://[::1:4318/v1/traces"), "traces.endpoint"),
    ("space in url", _traces(endpoint="http://127.0.0.1:4318/v1/ traces"), "traces.endpoint"),
    ("fragment in url", _traces(endpoint=HTTP_URL + "#frag"), "traces.endpoint"),
    ("traces enabled without endpoint", _traces(enabled=True), "traces.endpoint"),
    ("metrics enabled without endpoint", _metrics(enabled=True), "metrics.endpoint"),
    ("header name with space", _traces(headers={"x api": "v"}), "traces.headers['x api']"),
    ("header name with CR/LF", _traces(headers={"x\r\ny": "v"}), "traces.headers["),
    ("empty header name", _traces(headers={"": "v"}), "traces.headers['']"),
    ("non-ASCII header name", _traces(headers={"clé": "v"}), "traces.headers['clé']"),
    ("header name with colon", _traces(headers={"x:y": "v"}), "traces.headers['x:y']"),
    (
        "header value with CR/LF",
        _traces(headers={"x-token": BAD_VALUE + "\r\nx-evil: 1"}),
        "traces.headers['x-token']",
    ),
    ("header value with LF", _traces(headers={"x-token": BAD_VALUE + "\n"}), "traces.headers["),
    ("header value with CR", _traces(headers={"x-token": BAD_VALUE + "\r"}), "traces.headers["),
    ("header value with NUL", _traces(headers={"x-token": BAD_VALUE + "\0"}), "traces.headers["),
    ("non-ASCII header value", _metrics(headers={"x-token": BAD_VALUE + "é"}), "metrics.headers["),
    (
        "header value too long",
        _traces(headers={"x-token": BAD_VALUE + "a" * 8200}),
        "traces.headers['x-token']",
    ),
    (
        "reserved content-type",
        _traces(headers={"Content-Type": "text/plain"}),
        "traces.headers['Content-Type']",
    ),
    ("reserved host", _traces(headers={"host": "evil"}), "traces.headers['host']"),
    ("reserved content-length", _traces(headers={"content-length": "1"}), "traces.headers["),
    ("reserved grpc te", _traces(protocol=GRPC, headers={"te": "x"}), "traces.headers['te']"),
    (
        "reserved grpc- prefix",
        _traces(protocol=GRPC, headers={"grpc-timeout": "1S"}),
        "traces.headers['grpc-timeout']",
    ),
    ("grpc -bin metadata", _traces(protocol=GRPC, headers={"x-bin": "AA=="}), "traces.headers["),
    (
        "duplicate names in two cases",
        _traces(headers={"X-Tenant": "a", "x-tenant": "b"}),
        "traces.headers[",
    ),
    ("33 headers", _traces(headers={f"x-h{i}": "v" for i in range(33)}), "traces.headers"),
    (
        "mask for a header never stored",
        _traces(headers={"x-never-stored": MASK}),
        "traces.headers['x-never-stored']",
    ),
    (
        "mask for a header stored in the other section",
        _metrics(headers={"authorization": MASK}),
        "metrics.headers['authorization']",
    ),
    ("timeout 0", _traces(timeout=dur(0)), "traces.timeout"),
    ("timeout 99ms", _traces(timeout=dur(0, 99_000_000)), "traces.timeout"),
    ("timeout 61s", _traces(timeout=dur(61)), "traces.timeout"),
    ("timeout 60.000000001s", _metrics(timeout=dur(60, 1)), "metrics.timeout"),
    ("negative timeout", _traces(timeout=dur(-1)), "traces.timeout"),
    ("nanos out of range", _traces(timeout=dur(1, 1_000_000_000)), "traces.timeout"),
    ("nanos against seconds' sign", _traces(timeout=dur(1, -5)), "traces.timeout"),
    (
        "export_interval 999ms",
        _metrics(export_interval=dur(0, 999_000_000)),
        "metrics.export_interval",
    ),
    ("export_interval 3601s", _metrics(export_interval=dur(3601)), "metrics.export_interval"),
    ("export_interval 0", _metrics(export_interval=dur(0)), "metrics.export_interval"),
    ("export_interval on traces", _traces(export_interval=dur(10)), "traces.export_interval"),
    (
        "temporality on traces",
        _traces(temporality=otel_config_pb2.TEMPORALITY_DELTA),
        "traces.temporality",
    ),
]


async def test_invalid_sets_are_invalid_argument_naming_the_field_and_change_nothing(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway()
    state_file = gw.state_dir / OTEL_CONFIG_FILE
    channel, c = await client_for(gw)
    async with channel:
        await c.set(BASELINE)
        before = await c.get()
        file_before = state_file.read_bytes()
        assert before.version == 1
        for case, config, path in INVALID:
            details = await rejected(c.set(config), grpc.StatusCode.INVALID_ARGUMENT)
            assert path in details, (case, details)
            # Header values are credentials: never echoed, whatever is wrong with them.
            assert BAD_VALUE not in details, (case, details)
            assert_no_secret(details)
            after = await c.get()
            assert (after.config, after.version) == (before.config, before.version), case
            assert state_file.read_bytes() == file_before, case
        # The stored secret is still the one in use: a masked round trip is still accepted.
        reply = await c.set(Cfg(traces=before.config.traces))
        assert reply.version == 2
        assert gw.otel is not None
        assert gw.otel.settings.traces.header_dict == {"authorization": SECRET_AUTH}


async def test_every_problem_of_one_set_is_reported_in_one_error(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway()
    channel, c = await client_for(gw)
    async with channel:
        before = await c.get()
        config = Cfg(
            traces=E(
                protocol=GRPC,
                encoding=otel_config_pb2.ENCODING_JSON,
                endpoint="http://127.0.0.1:4317/v1/traces",
                headers={"bad name": "v", "x-ok": MASK},
                timeout=dur(61),
                temporality=otel_config_pb2.TEMPORALITY_DELTA,
            ),
            metrics=E(enabled=True, export_interval=dur(0, 5)),
        )
        details = await rejected(c.set(config), grpc.StatusCode.INVALID_ARGUMENT)
        for path in (
            "traces.encoding",
            "traces.endpoint",
            "traces.headers['bad name']",
            "traces.headers['x-ok']",
            "traces.timeout",
            "traces.temporality",
            "metrics.endpoint",
            "metrics.export_interval",
        ):
            assert path in details, (path, details)
        after = await c.get()
        assert (after.config, after.version) == (before.config, before.version)


async def test_unknown_enum_numbers_are_invalid_argument_naming_the_field(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway()
    channel, c = await client_for(gw)
    async with channel:
        before = await c.get()
        for config, path in [
            (_traces(protocol=7), "traces.protocol"),
            (_metrics(encoding=9), "metrics.encoding"),
            (_traces(compression=5), "traces.compression"),
            (_metrics(temporality=8), "metrics.temporality"),
        ]:
            details = await rejected(c.set(config), grpc.StatusCode.INVALID_ARGUMENT)
            assert path in details, details
            assert "unknown value" in details
            after = await c.get()
            assert (after.config, after.version) == (before.config, before.version)


async def test_boundary_values_are_accepted(start_gateway: StartGateway) -> None:
    gw = await start_gateway()
    channel, c = await client_for(gw)
    async with channel:
        reply = await c.set(
            Cfg(
                traces=E(
                    endpoint="https://otlp.example.com/otlp/v1/traces?tenant=a",
                    timeout=dur(0, 100_000_000),
                    headers={
                        "!#$%&'*+-.^_`|~09AZaz": "printable ~!@# value\twith tab",
                        **{f"x-h{i}": "v" for i in range(31)},
                    },
                    compression=otel_config_pb2.COMPRESSION_GZIP,
                ),
                metrics=E(
                    protocol=GRPC,
                    endpoint="https://otlp.example.com:4317/",
                    timeout=dur(60),
                    export_interval=dur(1),
                ),
            )
        )
        assert reply.version == 1
        assert len(reply.config.traces.headers) == 32
        assert reply.config.traces.timeout == dur(0, 100_000_000)
        assert reply.config.traces.compression == otel_config_pb2.COMPRESSION_GZIP
        assert reply.config.metrics.timeout == dur(60)
        assert reply.config.metrics.export_interval == dur(1)
        reply = await c.set(_metrics(export_interval=dur(3600)))
        assert reply.config.metrics.export_interval == dur(3600)


# --- sections, versions, optimistic concurrency --------------------------------------------------


async def test_a_section_left_out_is_unchanged_and_each_set_adds_one_to_the_version(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway()
    channel, c = await client_for(gw)
    async with channel:
        one = await c.set(_traces(endpoint=HTTP_URL, timeout=dur(3)))
        assert one.version == 1
        assert one.config.traces.endpoint == HTTP_URL
        assert one.config.metrics.endpoint == ""
        two = await c.set(_metrics(endpoint="http://127.0.0.1:4318/v1/metrics"))
        assert two.version == 2
        assert two.config.traces == one.config.traces  # left out: unchanged
        assert two.config.metrics.endpoint == "http://127.0.0.1:4318/v1/metrics"
        # A section sent replaces the stored one whole: fields left out take their defaults.
        three = await c.set(_traces(endpoint=HTTP_URL))
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
        await c.set(_traces(endpoint=HTTP_URL))
        await c.set(_traces(endpoint=HTTP_URL, timeout=dur(4)))
        before = await c.get()
        assert before.version == 2
        for stale in (0, 1, 3, 99):
            details = await rejected(
                c.set(_traces(endpoint="http://127.0.0.1:1/v1/traces"), expected_version=stale),
                grpc.StatusCode.FAILED_PRECONDITION,
            )
            assert "expected_version" in details
            after = await c.get()
            assert (after.config, after.version) == (before.config, before.version), stale
        applied = await c.set(_traces(endpoint="http://127.0.0.1:2/v1/traces"), expected_version=2)
        assert applied.version == 3
        assert applied.config.traces.endpoint == "http://127.0.0.1:2/v1/traces"

        # Two operators editing the same version at once: exactly one wins.
        results = await asyncio.gather(
            c.set(_traces(endpoint="http://127.0.0.1:3/v1/traces"), expected_version=3),
            c.set(_traces(endpoint="http://127.0.0.1:4/v1/traces"), expected_version=3),
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
            _traces(
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


# --- persistence ------------------------------------------------------------------------------


async def test_config_survives_a_restart_and_wins_over_the_environment(
    start_gateway: StartGateway, http_rx: HttpOtlpReceiver, tmp_path: Path
) -> None:
    state = tmp_path / "shared-state"
    gw1 = await start_gateway(state_dir=state)
    channel, c = await client_for(gw1)
    async with channel:
        await c.set(
            Cfg(
                traces=E(
                    enabled=True,
                    endpoint=http_rx.traces_url,
                    headers={"authorization": SECRET_AUTH, "x-api-key": SECRET_KEY},
                    timeout=dur(3),
                ),
                metrics=E(
                    endpoint=http_rx.metrics_url,
                    export_interval=dur(120),
                    temporality=otel_config_pb2.TEMPORALITY_DELTA,
                ),
            )
        )
        saved = await c.get()
    assert saved.version == 1
    await gw1.stop(grace=0.5)

    path = state / OTEL_CONFIG_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["format"] == 2
    assert [v["version"] for v in doc["history"]] == [1]
    assert [p.name for p in state.iterdir() if p.name.endswith(".tmp")] == []  # no temp left

    http_rx.clear()
    # The environment points elsewhere; the stored config must win.
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=from-env",
    }
    gw2 = await start_gateway(state_dir=state, env=env)
    channel, c = await client_for(gw2)
    async with channel:
        restored = await c.get()
        assert (restored.config, restored.version) == (saved.config, saved.version)
        await c.complete(TRACE_ID)
        await flush_spans(gw2)
        # Secrets survived the restart: the export arrives with them.
        arrived = received_headers(http_rx, "/v1/traces")
        assert arrived
        assert {h["authorization"] for h in arrived} == {SECRET_AUTH}
        assert {h["x-api-key"] for h in arrived} == {SECRET_KEY}
        assert (TRACE_ID, "chat echo-1") in {(t, n) for t, _, n in http_rx.spans()}
        # And the version carries on from the stored one.
        assert (await c.set(_metrics(endpoint=http_rx.metrics_url))).version == 2


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\x00\xff\xfe garbage \x13", "corrupt"),
        (b'{"format": 1, "version": 3, "traces": {', "corrupt"),  # torn write
        (b"[1, 2, 3]", "corrupt"),
        (b'{"format": 1, "version": 1}', "corrupt"),  # sections missing
        (b'{"format": 99, "version": 1, "traces": {}, "metrics": {}}', "unknown format 99"),
    ],
)
async def test_an_unreadable_state_file_stops_the_start_naming_the_file(
    start_gateway: StartGateway, tmp_path: Path, content: bytes, problem: str
) -> None:
    """Observed behaviour: `Gateway.start()` raises ConfigStoreError("<path>: corrupt OTEL
    config (<ExceptionType>); fix or remove the file to start from the environment defaults")
    before the gRPC server is created; it neither falls back to the environment nor rewrites
    the file."""
    state = tmp_path / "corrupt-state"
    state.mkdir()
    path = state / OTEL_CONFIG_FILE
    path.write_bytes(content)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    with pytest.raises(ConfigStoreError) as info:
        await start_gateway(state_dir=state, env=env)
    message = str(info.value)
    assert str(path) in message
    assert problem in message
    assert path.read_bytes() == content  # left alone for the operator to inspect


def _stored_doc(**traces: Any) -> dict[str, Any]:
    section = {
        "enabled": False,
        "protocol": "http",
        "endpoint": "",
        "encoding": "proto",
        "headers": [],
        "timeout": 5.0,
        "compression": "none",
        "export_interval": 60.0,
        "temporality": "cumulative",
    }
    return {"format": 1, "version": 4, "traces": {**section, **traces}, "metrics": section}


async def test_a_state_file_with_invalid_values_stops_the_start(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    for n, traces in enumerate(
        [
            {"enabled": True, "endpoint": "ftp://127.0.0.1/v1/traces"},
            {"protocol": "carrier-pigeon", "endpoint": "http://127.0.0.1:9/v1/traces"},
            {"timeout": -5},
            {"headers": [["x-token", "v\r\nx-injected: 1"]], "endpoint": "http://127.0.0.1:9/v"},
        ]
    ):
        state = tmp_path / f"tampered-state{n}"
        state.mkdir()
        path = state / OTEL_CONFIG_FILE
        path.write_text(json.dumps(_stored_doc(**traces)))
        with pytest.raises(ConfigStoreError, match=re.escape(str(path))):
            await start_gateway(state_dir=state)


# --- environment seeding ----------------------------------------------------------------------


async def test_environment_base_endpoint_headers_temporality_and_exporter_none(
    start_gateway: StartGateway, http_rx: HttpOtlpReceiver
) -> None:
    env = {
        # A base URL (trailing slash and all): the signal paths are appended for http/protobuf.
        "OTEL_EXPORTER_OTLP_ENDPOINT": http_rx.endpoint + "/",
        # Percent-encoded values, as the spec says; names in any case.
        "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20env-s3cret%2Cpart2, X-Tenant = acme",
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta",
        "OTEL_TRACES_EXPORTER": "none",
    }
    gw = await start_gateway(env=env)
    channel, c = await client_for(gw)
    async with channel:
        got = await c.get()
        await c.complete()
    assert got.version == 0
    traces, metrics = got.config.traces, got.config.metrics
    assert traces.enabled is False  # OTEL_TRACES_EXPORTER=none
    assert traces.endpoint == http_rx.endpoint + "/v1/traces"
    assert metrics.enabled is True
    assert metrics.endpoint == http_rx.endpoint + "/v1/metrics"
    assert metrics.protocol == otel_config_pb2.PROTOCOL_HTTP
    assert metrics.encoding == otel_config_pb2.ENCODING_PROTO
    assert metrics.temporality == otel_config_pb2.TEMPORALITY_DELTA
    for section in (traces, metrics):
        assert dict(section.headers) == {"authorization": MASK, "x-tenant": MASK}
    assert_no_secret(got, ("env-s3cret", "acme"))

    # Stopping flushes the metric export: it arrives with the decoded header values, as delta.
    await gw.stop(grace=0.5)
    arrived = received_headers(http_rx, "/v1/metrics")
    assert arrived, http_rx.requests
    assert {h["authorization"] for h in arrived} == {"Bearer env-s3cret,part2"}
    assert {h["x-tenant"] for h in arrived} == {"acme"}
    assert received_headers(http_rx, "/v1/traces") == []
    temporalities = {
        metric.name: metric.histogram.aggregation_temporality
        for request in http_rx.metric_requests()
        for rm in request.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.WhichOneof("data") == "histogram"
    }
    assert temporalities.get("rpc.server.call.duration") == (
        metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
    ), temporalities


async def test_environment_signal_endpoint_is_used_verbatim_and_http_json(
    start_gateway: StartGateway, http_rx: HttpOtlpReceiver
) -> None:
    custom = http_rx.url("/custom/otlp/v1/traces")
    env = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": custom,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "2500",
    }
    gw = await start_gateway(env=env)
    channel, c = await client_for(gw)
    async with channel:
        got = await c.get()
        assert got.config.traces.enabled is True
        assert got.config.traces.endpoint == custom
        assert got.config.traces.encoding == otel_config_pb2.ENCODING_JSON
        assert got.config.traces.timeout == dur(2, 500_000_000)
        # No endpoint for metrics: they stay off.
        assert got.config.metrics.enabled is False
        assert got.config.metrics.endpoint == ""
        await c.complete(TRACE_ID)
        await flush_spans(gw)
    records = [r for r in http_rx.requests if r.path == "/custom/otlp/v1/traces"]
    assert records
    assert all(r.content_type.startswith("application/json") for r in records)
    assert http_rx.violations == []
    assert (TRACE_ID, "chat echo-1") in {(t, n) for t, _, n in http_rx.spans()}


async def test_environment_grpc_protocol_uses_the_base_endpoint_as_is(
    start_gateway: StartGateway, grpc_rx: GrpcOtlpReceiver
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": grpc_rx.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-api-key=" + SECRET_KEY,
        "OTEL_METRICS_EXPORTER": "none",
    }
    gw = await start_gateway(env=env)
    channel, c = await client_for(gw)
    async with channel:
        got = await c.get()
        for section in (got.config.traces, got.config.metrics):
            assert section.protocol == otel_config_pb2.PROTOCOL_GRPC
            assert section.endpoint == grpc_rx.endpoint  # no /v1/... for gRPC
        assert got.config.traces.enabled is True
        assert got.config.metrics.enabled is False
        assert dict(got.config.traces.headers) == {"x-api-key": MASK}
        assert dict(got.config.metrics.headers) == {}  # the TRACES_ variable is traces only
        await c.complete(TRACE_ID)
        await flush_spans(gw)
    assert (TRACE_ID, "chat echo-1") in {(t, n) for t, _, n in grpc_rx.spans()}
    assert {r.metadata_dict.get("x-api-key") for r in grpc_rx.requests} == {SECRET_KEY}


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "x",
            },
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                "OTEL_EXPORTER_OTLP_TIMEOUT": "5s",
            },
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        ),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "127.0.0.1:4318"}, "traces.endpoint"),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                "OTEL_EXPORTER_OTLP_HEADERS": "x-token=" + BAD_VALUE + "%0D%0Ax-evil: 1",
            },
            "traces.headers['x-token']",
        ),
    ],
    ids=["protocol", "timeout", "endpoint", "crlf-header-value"],
)
async def test_bad_environment_stops_the_start_naming_the_variable(
    start_gateway: StartGateway, env: dict[str, str], named: str
) -> None:
    with pytest.raises(InvalidConfig) as info:
        await start_gateway(env=env)
    assert named in str(info.value)
    assert BAD_VALUE not in str(info.value)


async def test_a_malformed_headers_variable_does_not_echo_the_secret(
    start_gateway: StartGateway,
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization:Bearer sk-live-0123456789abcdef",
    }
    with pytest.raises(InvalidConfig) as info:
        await start_gateway(env=env)
    assert "OTEL_EXPORTER_OTLP_TRACES_HEADERS" in str(info.value)
    assert "sk-live-0123456789abcdef" not in str(info.value)


async def test_an_infinite_timeout_variable_is_an_invalid_config(
    start_gateway: StartGateway,
) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_EXPORTER_OTLP_TIMEOUT": "inf"}
    with pytest.raises(InvalidConfig, match="OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"):
        await start_gateway(env=env)


# --- TestOtelConfig -----------------------------------------------------------------------------


async def test_test_export_reports_the_backend_answer_and_changes_nothing(
    start_gateway: StartGateway, http_rx: HttpOtlpReceiver, grpc_rx: GrpcOtlpReceiver
) -> None:
    gw = await start_gateway()
    channel, c = await client_for(gw)
    async with channel:
        # Stored disabled at the receiver's origin, so Test may reuse the secret behind the mask.
        await c.set(
            _traces(
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
        only_metrics = await c.test(_metrics(endpoint=http_rx.metrics_url))
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
        grpc_ok = await c.test(_traces(protocol=GRPC, endpoint=grpc_rx.endpoint))
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
                _traces(endpoint=url, encoding=otel_config_pb2.ENCODING_JSON, timeout=quick)
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
            (_traces(), "traces.endpoint"),
            (
                _traces(
                    protocol=GRPC,
                    encoding=otel_config_pb2.ENCODING_JSON,
                    endpoint="http://127.0.0.1:4317",
                ),
                "traces.encoding",
            ),
            (_metrics(endpoint=HTTP_URL, headers={"authorization": MASK}), "metrics.headers["),
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
        await c.set(_traces(endpoint=http_rx.traces_url, headers={"authorization": SECRET_AUTH}))
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
            _metrics(protocol=GRPC, endpoint=grpc_rx.endpoint, headers={"x-api-key": SECRET_KEY})
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
                _traces(endpoint="nope", headers={"authorization": SECRET_AUTH, "x y": SECRET_KEY})
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
            details = await rejected(c.set(_traces(endpoint=url)), grpc.StatusCode.INVALID_ARGUMENT)
            assert "traces.endpoint" in details
            assert "pa55-w0rd-x" not in details, details
