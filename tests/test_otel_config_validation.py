"""AdminService SetOtelConfig validation over real gRPC: every invalid config is
INVALID_ARGUMENT naming its field (all problems in one error, header values never echoed) and
changes nothing; boundary values are accepted.
"""

from __future__ import annotations

import grpc
from aigw.v1 import otel_config_pb2

from admin.otel_config import MASK
from gateway.server import OTEL_CONFIG_FILE
from tests.clients import client_for, rejected
from tests.otel_config_support import (
    BAD_VALUE,
    BASELINE,
    GRPC,
    HTTP_URL,
    SECRET_AUTH,
    Cfg,
    E,
    StartGateway,
    assert_no_secret,
    dur,
    metrics_only,
    traces_only,
)

# (case id, config, dotted path the error must name)
INVALID: list[tuple[str, otel_config_pb2.OtelConfig, str]] = [
    (
        "json over grpc",
        traces_only(
            protocol=GRPC, encoding=otel_config_pb2.ENCODING_JSON, endpoint="http://h:4317"
        ),
        "traces.encoding",
    ),
    ("url without scheme", traces_only(endpoint="127.0.0.1:4318/v1/traces"), "traces.endpoint"),
    ("url with ftp scheme", traces_only(endpoint="ftp://127.0.0.1/v1/traces"), "traces.endpoint"),
    ("url without host", traces_only(endpoint="http:///v1/traces"), "traces.endpoint"),
    ("url with only a port", traces_only(endpoint="http://:4318/v1/traces"), "traces.endpoint"),
    (
        "grpc endpoint with a path",
        traces_only(protocol=GRPC, endpoint="http://127.0.0.1:4317/v1/traces"),
        "traces.endpoint",
    ),
    (
        "grpc endpoint with a query",
        metrics_only(protocol=GRPC, endpoint="http://127.0.0.1:4317?x=1"),
        "metrics.endpoint",
    ),
    ("port 70000", traces_only(endpoint="http://127.0.0.1:70000/v1/traces"), "traces.endpoint"),
    ("port 0", traces_only(endpoint="http://127.0.0.1:0/v1/traces"), "traces.endpoint"),
    ("port 65536", metrics_only(endpoint="http://127.0.0.1:65536/v1/metrics"), "metrics.endpoint"),
    (
        "credentials in url",
        traces_only(endpoint="http://user:pw@127.0.0.1:4318/v1/traces"),
        "traces.endpoint",
    ),
    (
        "unclosed IPv6 bracket",
        traces_only(endpoint="http://[::1:4318/v1/traces"),
        "traces.endpoint",
    ),
    ("space in url", traces_only(endpoint="http://127.0.0.1:4318/v1/ traces"), "traces.endpoint"),
    ("fragment in url", traces_only(endpoint=HTTP_URL + "#frag"), "traces.endpoint"),
    ("traces enabled without endpoint", traces_only(enabled=True), "traces.endpoint"),
    ("metrics enabled without endpoint", metrics_only(enabled=True), "metrics.endpoint"),
    ("header name with space", traces_only(headers={"x api": "v"}), "traces.headers['x api']"),
    ("header name with CR/LF", traces_only(headers={"x\r\ny": "v"}), "traces.headers["),
    ("empty header name", traces_only(headers={"": "v"}), "traces.headers['']"),
    ("non-ASCII header name", traces_only(headers={"clé": "v"}), "traces.headers['clé']"),
    ("header name with colon", traces_only(headers={"x:y": "v"}), "traces.headers['x:y']"),
    (
        "header value with CR/LF",
        traces_only(headers={"x-token": BAD_VALUE + "\r\nx-evil: 1"}),
        "traces.headers['x-token']",
    ),
    ("header value with LF", traces_only(headers={"x-token": BAD_VALUE + "\n"}), "traces.headers["),
    ("header value with CR", traces_only(headers={"x-token": BAD_VALUE + "\r"}), "traces.headers["),
    (
        "header value with NUL",
        traces_only(headers={"x-token": BAD_VALUE + "\0"}),
        "traces.headers[",
    ),
    (
        "non-ASCII header value",
        metrics_only(headers={"x-token": BAD_VALUE + "é"}),
        "metrics.headers[",
    ),
    (
        "header value too long",
        traces_only(headers={"x-token": BAD_VALUE + "a" * 8200}),
        "traces.headers['x-token']",
    ),
    (
        "reserved content-type",
        traces_only(headers={"Content-Type": "text/plain"}),
        "traces.headers['Content-Type']",
    ),
    ("reserved host", traces_only(headers={"host": "evil"}), "traces.headers['host']"),
    ("reserved content-length", traces_only(headers={"content-length": "1"}), "traces.headers["),
    ("reserved grpc te", traces_only(protocol=GRPC, headers={"te": "x"}), "traces.headers['te']"),
    (
        "reserved grpc- prefix",
        traces_only(protocol=GRPC, headers={"grpc-timeout": "1S"}),
        "traces.headers['grpc-timeout']",
    ),
    (
        "grpc -bin metadata",
        traces_only(protocol=GRPC, headers={"x-bin": "AA=="}),
        "traces.headers[",
    ),
    (
        "duplicate names in two cases",
        traces_only(headers={"X-Tenant": "a", "x-tenant": "b"}),
        "traces.headers[",
    ),
    ("33 headers", traces_only(headers={f"x-h{i}": "v" for i in range(33)}), "traces.headers"),
    (
        "mask for a header never stored",
        traces_only(headers={"x-never-stored": MASK}),
        "traces.headers['x-never-stored']",
    ),
    (
        "mask for a header stored in the other section",
        metrics_only(headers={"authorization": MASK}),
        "metrics.headers['authorization']",
    ),
    ("timeout 0", traces_only(timeout=dur(0)), "traces.timeout"),
    ("timeout 99ms", traces_only(timeout=dur(0, 99_000_000)), "traces.timeout"),
    ("timeout 61s", traces_only(timeout=dur(61)), "traces.timeout"),
    ("timeout 60.000000001s", metrics_only(timeout=dur(60, 1)), "metrics.timeout"),
    ("negative timeout", traces_only(timeout=dur(-1)), "traces.timeout"),
    ("nanos out of range", traces_only(timeout=dur(1, 1_000_000_000)), "traces.timeout"),
    ("nanos against seconds' sign", traces_only(timeout=dur(1, -5)), "traces.timeout"),
    (
        "export_interval 999ms",
        metrics_only(export_interval=dur(0, 999_000_000)),
        "metrics.export_interval",
    ),
    ("export_interval 3601s", metrics_only(export_interval=dur(3601)), "metrics.export_interval"),
    ("export_interval 0", metrics_only(export_interval=dur(0)), "metrics.export_interval"),
    ("export_interval on traces", traces_only(export_interval=dur(10)), "traces.export_interval"),
    (
        "temporality on traces",
        traces_only(temporality=otel_config_pb2.TEMPORALITY_DELTA),
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
            (traces_only(protocol=7), "traces.protocol"),
            (metrics_only(encoding=9), "metrics.encoding"),
            (traces_only(compression=5), "traces.compression"),
            (metrics_only(temporality=8), "metrics.temporality"),
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
        reply = await c.set(metrics_only(export_interval=dur(3600)))
        assert reply.config.metrics.export_interval == dur(3600)
