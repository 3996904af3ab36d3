"""OTLP export over TLS, with real handshakes: a gateway exports to receivers serving TLS on
127.0.0.1 with certificates made at test time (`tests/certs.py`), for each protocol.

Trusted CA → spans arrive; unknown CA, expired certificate, wrong host → reason `tls` with the
verifier's words, in TestOtelConfig and in the live health; mTLS; the server name override; the
minimum TLS version; insecure_skip_verify; and the process environment's CA bundles
(REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, SSL_CERT_FILE, GRPC_DEFAULT_SSL_ROOTS_FILE_PATH,
OTEL_EXPORTER_OTLP_CERTIFICATE) never changing what an exporter trusts. The client key never
appears in a log line, a response or the trace store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from aigw.v1 import admin_pb2, admin_pb2_grpc, completion_pb2_grpc, otel_config_pb2
from google.protobuf import duration_pb2, json_format

from admin.otel_config import MASK
from admin.otel_proto import INSECURE_WARNING
from gateway.server import Gateway
from tests.certs import CertificateAuthority, Issued
from tests.conftest import GatewayFactory, chat
from tests.otlp_receivers import ServerTls, TlsGrpcOtlpReceiver, TlsHttpOtlpReceiver

HTTP, GRPC = otel_config_pb2.PROTOCOL_HTTP, otel_config_pb2.PROTOCOL_GRPC
PROTO, JSON = otel_config_pb2.ENCODING_PROTO, otel_config_pb2.ENCODING_JSON
TRANSPORTS = {"http/proto": (HTTP, PROTO), "http/json": (HTTP, JSON), "grpc": (GRPC, PROTO)}
LABELS = list(TRANSPORTS)
Receiver = TlsHttpOtlpReceiver | TlsGrpcOtlpReceiver


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    other_ca: CertificateAuthority
    server: Issued
    expired: Issued
    wrong_host: Issued
    client: Issued
    stranger: Issued  # a client certificate from the other CA


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca, other = CertificateAuthority("aigw export CA"), CertificateAuthority("someone else's CA")
    return Pki(
        ca=ca,
        other_ca=other,
        server=ca.server(),
        expired=ca.server(expired=True),
        wrong_host=ca.server(hosts=("collector.example",)),
        client=ca.client("aigw exporter"),
        stranger=other.client("stranger"),
    )


def key_lines(issued: Issued) -> list[str]:
    """The base64 body of a private key: what must never leave the gateway."""
    return [line for line in issued.key_pem.decode().splitlines() if not line.startswith("-----")]


def assert_no_key(text: str, issued: Issued) -> None:
    for line in key_lines(issued):
        assert line not in text, "private key material leaked"


@contextlib.contextmanager
def tls_receiver(
    label: str, served: Issued, client_ca: CertificateAuthority | None = None, **kw: object
) -> Iterator[Receiver]:
    tls = ServerTls(served.cert_pem, served.key_pem, client_ca.cert_pem if client_ca else None)
    if kw:
        tls = ServerTls(tls.cert_pem, tls.key_pem, tls.client_ca_pem, **kw)  # type: ignore[arg-type]
    rx: Receiver = TlsGrpcOtlpReceiver(tls) if label == "grpc" else TlsHttpOtlpReceiver(tls)
    with rx:
        yield rx


def traces_endpoint(rx: Receiver) -> str:
    return rx.endpoint if isinstance(rx, TlsGrpcOtlpReceiver) else rx.traces_url


def tls_config(
    ca: CertificateAuthority | None = None,
    client: Issued | None = None,
    **fields: object,
) -> otel_config_pb2.TlsConfig:
    tls = otel_config_pb2.TlsConfig(**fields)  # type: ignore[arg-type]
    if ca is not None:
        tls.ca_pem = ca.cert_pem.decode()
    if client is not None:
        tls.client_cert_pem, tls.client_key_pem = client.cert_pem.decode(), client.key_pem.decode()
    return tls


def section(
    label: str,
    endpoint: str,
    tls: otel_config_pb2.TlsConfig | None = None,
    *,
    enabled: bool = False,
    timeout: float = 5.0,
) -> otel_config_pb2.ExporterConfig:
    protocol, encoding = TRANSPORTS[label]
    pb = otel_config_pb2.ExporterConfig(
        enabled=enabled,
        protocol=protocol,
        encoding=encoding,
        endpoint=endpoint,
        timeout=duration_pb2.Duration(nanos=int(timeout * 1e9) % 10**9, seconds=int(timeout)),
    )
    if tls is not None:
        pb.tls.CopyFrom(tls)
    return pb


class Client:
    def __init__(self, gw: Gateway, channel: grpc.aio.Channel) -> None:
        self.gw = gw
        self.admin = admin_pb2_grpc.AdminServiceStub(channel)
        self.completion = completion_pb2_grpc.CompletionStub(channel)

    async def test(self, pb: otel_config_pb2.ExporterConfig) -> admin_pb2.ExportTestResult:
        request = admin_pb2.TestOtelConfigRequest(config=otel_config_pb2.OtelConfig(traces=pb))
        return (await self.admin.TestOtelConfig(request, timeout=30)).traces

    async def set(self, pb: otel_config_pb2.ExporterConfig) -> admin_pb2.SetOtelConfigResponse:
        request = admin_pb2.SetOtelConfigRequest(config=otel_config_pb2.OtelConfig(traces=pb))
        return await self.admin.SetOtelConfig(request, timeout=30)

    async def get(self) -> admin_pb2.GetOtelConfigResponse:
        return await self.admin.GetOtelConfig(admin_pb2.GetOtelConfigRequest(), timeout=10)

    async def export_one(self) -> None:
        """One call, its spans flushed through the live exporter."""
        await self.completion.Complete(chat("over TLS"), timeout=10)
        assert self.gw.telemetry is not None
        await asyncio.to_thread(self.gw.telemetry.force_flush, 15)

    async def live_error(self, pb: otel_config_pb2.ExporterConfig) -> str:
        """Apply `pb` (enabled), export once, and answer the health's last error."""
        await self.set(pb)
        before = (await self.get()).health.traces.last_error_time.ToNanoseconds()
        deadline = time.monotonic() + 20
        while True:
            await self.export_one()
            health = (await self.get()).health.traces
            if health.last_error_time.ToNanoseconds() > before:
                return health.last_error
            assert time.monotonic() < deadline, f"no export failure recorded: {health}"


@pytest.fixture
async def client(gateway_factory: GatewayFactory) -> AsyncIterator[Client]:
    gw = await gateway_factory()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
        yield Client(gw, channel)


MISMATCH = {
    "http/proto": "certificate verify failed: IP address mismatch, certificate is not valid for",
    "http/json": "certificate verify failed: IP address mismatch, certificate is not valid for",
    "grpc": "certificate verify failed: hostname mismatch",
}


@pytest.mark.parametrize("label", LABELS)
async def test_a_trusted_private_ca_exports_and_bad_certificates_fail_with_the_verifiers_words(
    label: str, pki: Pki, client: Client
) -> None:
    with tls_receiver(label, pki.server) as rx:
        ok = await client.test(section(label, traces_endpoint(rx), tls_config(pki.ca)))
        assert (ok.success, ok.reason, ok.message) == (True, "", ""), ok
        assert len(rx.spans()) == 1  # the probe's span, through the real handshake
        await client.set(section(label, traces_endpoint(rx), tls_config(pki.ca), enabled=True))
        await client.export_one()
        assert len(rx.spans()) > 1
        health = (await client.get()).health.traces
        assert health.exported >= 1, health
        assert health.last_error == "", health

    cases = [
        ("unknown CA", pki.server, pki.other_ca, "unable to get local issuer certificate"),
        ("expired", pki.expired, pki.ca, "certificate verify failed: certificate has expired"),
        ("wrong host", pki.wrong_host, pki.ca, MISMATCH[label]),
    ]
    for case, served, trusted, words in cases:
        with tls_receiver(label, served) as rx:
            endpoint = traces_endpoint(rx)
            result = await client.test(section(label, endpoint, tls_config(trusted)))
            assert (result.success, result.reason) == (False, "tls"), (case, result)
            assert words in result.message, (case, result.message)
            assert result.message.endswith(f"(127.0.0.1:{rx.port})"), result.message
            live = await client.live_error(
                section(label, endpoint, tls_config(trusted), enabled=True, timeout=1)
            )
            assert live.startswith("tls: "), (case, live)
            assert words in live, (case, live)
            assert rx.spans() == [], case


@pytest.mark.parametrize("label", LABELS)
async def test_mtls_refuses_without_a_client_certificate_and_exports_with_one(
    label: str, pki: Pki, client: Client
) -> None:
    refused = {
        "http/proto": "TLS handshake failed: tlsv13 alert certificate required",
        "http/json": "TLS handshake failed: tlsv13 alert certificate required",
        "grpc": "TLS connection closed by the server (does it require a client certificate",
    }[label]
    with tls_receiver(label, pki.server, client_ca=pki.ca) as rx:
        endpoint = traces_endpoint(rx)
        for client_cert in (None, pki.stranger):
            result = await client.test(section(label, endpoint, tls_config(pki.ca, client_cert)))
            assert (result.success, result.reason) == (False, "tls"), result
            assert refused in result.message or (
                # A certificate from the wrong CA: the server's alert names it.
                client_cert is not None and "TLS handshake failed" in result.message
            ), result.message
        assert rx.spans() == []
        good = tls_config(pki.ca, pki.client)
        result = await client.test(section(label, endpoint, good))
        assert result.success, result
        # The metrics section takes the same settings.
        metrics = rx.endpoint if isinstance(rx, TlsGrpcOtlpReceiver) else rx.metrics_url
        request = admin_pb2.TestOtelConfigRequest(
            config=otel_config_pb2.OtelConfig(metrics=section(label, metrics, good))
        )
        assert (await client.admin.TestOtelConfig(request, timeout=30)).metrics.success
        assert rx.metric_points()
        await client.set(section(label, endpoint, good, enabled=True))
        await client.export_one()
        assert len(rx.spans()) >= 2  # the probe's, then the live export's
        if isinstance(rx, TlsHttpOtlpReceiver):
            assert set(rx.client_subjects) == {"commonName=aigw exporter"}
        shown = (await client.get()).config.traces.tls
        assert shown.client_key_pem == MASK
        assert shown.client_cert_pem == pki.client.cert_pem.decode()


@pytest.mark.parametrize("label", LABELS)
async def test_the_server_name_override_makes_a_wrong_host_certificate_pass(
    label: str, pki: Pki, client: Client
) -> None:
    with tls_receiver(label, pki.wrong_host) as rx:
        pb = section(label, traces_endpoint(rx), tls_config(pki.ca))
        assert not (await client.test(pb)).success
        pb.tls.server_name = "collector.example"
        result = await client.test(pb)
        assert result.success, result
        pb.tls.server_name = "elsewhere.example"  # the override is the name verified
        assert (await client.test(pb)).reason == "tls"
        assert len(rx.spans()) == 1


ENV_BUNDLES = (
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "SSL_CERT_FILE",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
)


@pytest.mark.parametrize("label", LABELS)
async def test_the_environments_ca_bundles_never_change_what_an_exporter_trusts(
    label: str, pki: Pki, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, wrong = pki.ca.write(tmp_path / "good.pem"), pki.other_ca.write(tmp_path / "wrong.pem")

    def environment(bundle: Path) -> None:
        for name in ENV_BUNDLES:
            monkeypatch.setenv(name, str(bundle))
        monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))

    with tls_receiver(label, pki.server) as rx:
        endpoint = traces_endpoint(rx)
        # A wrong bundle in every variable does not override the configured CA …
        environment(wrong)
        result = await client.test(section(label, endpoint, tls_config(pki.ca)))
        assert result.success, result
        # … and a bundle that would work does not add to one that does not,
        environment(good)
        result = await client.test(section(label, endpoint, tls_config(pki.other_ca)))
        assert (result.success, result.reason) == (False, "tls"), result
        # nor stand in for the default roots when no CA is configured.
        result = await client.test(section(label, endpoint, tls_config(server_name="localhost")))
        assert (result.success, result.reason) == (False, "tls"), result
        assert "unable to get local issuer certificate" in result.message
        # The live exporter (built on apply) does not read them either.
        live = await client.live_error(
            section(label, endpoint, tls_config(pki.other_ca), enabled=True, timeout=1)
        )
        assert live.startswith("tls: "), live
        assert len(rx.spans()) == 1


@pytest.mark.parametrize("label", ["http/proto", "http/json"])
async def test_the_minimum_tls_version_is_honoured_over_http(
    label: str, pki: Pki, client: Client
) -> None:
    with tls_receiver(label, pki.server, max_version=ssl.TLSVersion.TLSv1_2) as rx:
        endpoint = traces_endpoint(rx)
        at_least_12 = tls_config(pki.ca, min_version=otel_config_pb2.TLS_VERSION_1_2)
        assert (await client.test(section(label, endpoint, at_least_12))).success
        at_least_13 = tls_config(pki.ca, min_version=otel_config_pb2.TLS_VERSION_1_3)
        result = await client.test(section(label, endpoint, at_least_13))
        assert (result.success, result.reason) == (False, "tls"), result
        assert "TLS handshake failed" in result.message, result.message
        assert len(rx.spans()) == 1


async def test_insecure_skip_verify_works_over_http_is_flagged_loudly_and_refused_over_grpc(
    pki: Pki, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with tls_receiver("http/proto", pki.wrong_host) as rx:  # wrong host, and no CA given
        skip = tls_config(insecure_skip_verify=True)
        for label in ("http/proto", "http/json"):
            assert (await client.test(section(label, rx.traces_url, skip))).success, label
        with caplog.at_level(logging.WARNING):
            reply = await client.set(section("http/proto", rx.traces_url, skip, enabled=True))
        assert list(reply.config.traces.warnings) == [INSECURE_WARNING]
        got = await client.get()
        assert list(got.config.traces.warnings) == [INSECURE_WARNING]
        assert list(got.config.metrics.warnings) == []
        loud = [r for r in caplog.records if "NOT verify" in r.getMessage()]
        assert len(loud) == 1, caplog.text
        assert loud[0].levelno == logging.WARNING
        await client.export_one()
        assert len(rx.spans()) >= 3
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.set(section("grpc", "https://127.0.0.1:4317", skip, enabled=True))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "traces.tls.insecure_skip_verify: not supported with PROTOCOL_GRPC" in (
        refused.value.details() or ""
    )


@pytest.mark.parametrize("label", LABELS)
async def test_the_client_key_never_leaves_the_gateway(
    label: str, pki: Pki, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    with tls_receiver(label, pki.server, client_ca=pki.ca) as rx:
        good = section(label, traces_endpoint(rx), tls_config(pki.ca, pki.client), enabled=True)
        texts.append(json_format.MessageToJson(await client.test(good)))
        texts.append(json_format.MessageToJson(await client.set(good)))
        await client.export_one()
        # A failing export (wrong CA) and an invalid Set log and answer errors: no key in them.
        bad = section(label, traces_endpoint(rx), tls_config(pki.other_ca, pki.client))
        texts.append(json_format.MessageToJson(await client.test(bad)))
        broken = section(label, "http://127.0.0.1:1/v1/traces", tls_config(None, pki.client))
        broken.tls.client_cert_pem = pki.stranger.cert_pem.decode()  # does not match the key
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await client.set(broken)
        texts.append(invalid.value.details() or "")
        assert "traces.tls.client_key_pem: does not match client_cert_pem" in texts[-1]
        shown = json_format.MessageToJson(await client.get())
        texts.append(shown)
        history = await client.admin.ListOtelConfigHistory(
            admin_pb2.ListOtelConfigHistoryRequest(), timeout=10
        )
        texts.append(json_format.MessageToJson(history))
        traces = await client.admin.ListTraces(admin_pb2.ListTracesRequest(), timeout=10)
        assert traces.traces
        for t in traces.traces:
            trace = await client.admin.GetTrace(
                admin_pb2.GetTraceRequest(trace_id=t.trace_id), timeout=10
            )
            texts.append(json_format.MessageToJson(trace))
        assert len(rx.spans()) >= 2
    texts.append(caplog.text)
    texts += [str(r.args) for r in caplog.records]
    for text in texts:
        assert_no_key(text, pki.client)
    assert f'"clientKeyPem": "{MASK}"' in shown  # masked, while the certificate is shown
    assert key_lines(pki.client)[0] not in shown
    assert pki.client.cert_pem.decode().splitlines()[1] in shown
