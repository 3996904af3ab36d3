"""TLS settings and endpoint query secrets as config: validation with dotted paths (never key
material), the masked round trip, the environment seeding, aigw-admin's flags, and the shared
config store sealing the key and the query values (no plain column holds them).

Handshakes are real (receivers serving TLS on 127.0.0.1); `test_export_tls.py` covers what each
protocol does with the settings.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from aigw.v1 import admin_pb2, otel_config_pb2
from cryptography.hazmat.primitives import serialization
from google.protobuf import json_format

from admin import cli
from admin.otel_config import MASK, InvalidConfig
from gateway import redaction
from gateway.server import OTEL_CONFIG_FILE
from gateway.telemetry.export_settings import ExporterSettings, TlsSettings, mask_query
from gateway.telemetry.otlp_exporters import build_span_exporter
from tests.conftest import GatewayFactory
from tests.otlp_receivers import HttpOtlpReceiver, ServerTls, TlsHttpOtlpReceiver
from tests.test_export_tls import Client, Pki, assert_no_key, key_lines, section, tls_config
from tests.test_export_tls import pki as pki
from tests.test_fleet_config import FAST, call, eventually, versions

SECRET_QUERY = "q5ecret-4a7e91c0ffee"


class QueryRecordingReceiver(HttpOtlpReceiver):
    """Also keeps each request's raw target (path and query), which the records leave out."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []

    def _handle_post(self, handler: Any) -> None:
        self.targets.append(handler.path)
        super()._handle_post(handler)


@pytest.fixture
def mtls_rx(pki: Pki) -> Iterator[TlsHttpOtlpReceiver]:
    tls = ServerTls(pki.server.cert_pem, pki.server.key_pem, pki.ca.cert_pem)
    with TlsHttpOtlpReceiver(tls) as rx:
        yield rx


@pytest.fixture
async def client(gateway_factory: GatewayFactory) -> AsyncIterator[Client]:
    gw = await gateway_factory()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
        yield Client(gw, channel)


async def refused(call_: Any) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call_
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return info.value.details() or ""


# --- validation ---------------------------------------------------------------------------------


async def test_every_tls_problem_is_reported_with_its_dotted_path_and_no_key_material(
    pki: Pki,
    client: Client,
) -> None:
    traces = section("http/proto", "http://127.0.0.1:4318/v1/traces")
    traces.tls.CopyFrom(
        otel_config_pb2.TlsConfig(
            ca_pem="not a certificate",
            client_cert_pem=pki.client.cert_pem.decode(),
            client_key_pem=pki.stranger.key_pem.decode(),  # someone else's key
            server_name="bad name!",
        )
    )
    metrics = section("grpc", "https://127.0.0.1:4317")
    metrics.tls.CopyFrom(
        otel_config_pb2.TlsConfig(
            client_key_pem=pki.client.key_pem.decode(),  # a key without its certificate
            insecure_skip_verify=True,
            min_version=otel_config_pb2.TLS_VERSION_1_3,
        )
    )
    details = await refused(
        client.admin.SetOtelConfig(
            admin_pb2.SetOtelConfigRequest(
                config=otel_config_pb2.OtelConfig(traces=traces, metrics=metrics)
            ),
            timeout=10,
        )
    )
    for expected in (
        "traces.tls: TLS settings need an https:// endpoint",
        "traces.tls.ca_pem: not a PEM certificate",
        "traces.tls.client_key_pem: does not match client_cert_pem",
        "traces.tls.server_name: not a host name or IP address",
        "metrics.tls.client_key_pem: needs client_cert_pem",
        "metrics.tls.insecure_skip_verify: not supported with PROTOCOL_GRPC",
        "metrics.tls.min_version: TLS_VERSION_1_3 is not supported with PROTOCOL_GRPC",
    ):
        assert expected in details, (expected, details)
    assert_no_key(details, pki.client)
    assert_no_key(details, pki.stranger)
    assert (await client.get()).version == 0  # nothing changed

    encrypted = serialization.load_pem_private_key(pki.client.key_pem, None).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    https = "https://127.0.0.1:4318/v1/traces"
    cases = [
        (
            tls_config(pki.ca, client_key_pem=encrypted.decode(), client_cert_pem="x"),
            "traces.tls.client_key_pem: an encrypted key is not supported",
        ),
        (
            tls_config(client_cert_pem=pki.client.cert_pem.decode()),
            "traces.tls.client_cert_pem: needs client_key_pem",
        ),
        (
            tls_config(ca_pem=(pki.ca.cert_pem + pki.client.key_pem).decode()),
            "traces.tls.ca_pem: holds a private key; only client_key_pem takes one",
        ),
        (
            tls_config(pki.ca, insecure_skip_verify=True),
            "traces.tls.insecure_skip_verify: set together with ca_pem",
        ),
        (
            tls_config(pki.ca, client_key_pem=MASK, client_cert_pem=pki.client.cert_pem.decode()),
            "traces.tls.client_key_pem: masked value sent, but no key is stored",
        ),
        (tls_config(pki.ca, min_version=7), "traces.tls.min_version: unknown value 7"),
    ]
    for tls, expected in cases:
        details = await refused(client.set(section("http/proto", https, tls)))
        assert expected in details, (expected, details)
        assert_no_key(details, pki.client)
        assert "passphrase" not in details


# --- the masked round trip ----------------------------------------------------------------------


async def test_the_masked_key_sent_back_keeps_the_stored_key_for_the_same_origin_only(
    pki: Pki,
    client: Client,
    mtls_rx: TlsHttpOtlpReceiver,
) -> None:
    await client.set(section("http/proto", mtls_rx.traces_url, tls_config(pki.ca, pki.client)))
    shown = (await client.get()).config
    assert shown.traces.tls.client_key_pem == MASK
    # Get → edit → Set: the mask goes back and the stored key stays, on the wire too.
    shown.traces.enabled = True
    shown.traces.timeout.FromSeconds(3)
    await client.set(shown.traces)
    assert client.gw.otel.settings.traces.tls.client_key_pem == pki.client.key_pem.decode()
    await client.export_one()
    assert len(mtls_rx.spans()) >= 1
    assert (await client.test(shown.traces)).success  # TestOtelConfig fills the mask in too
    # Another origin: the mask stands for nothing there.
    elsewhere = otel_config_pb2.ExporterConfig()
    elsewhere.CopyFrom(shown.traces)
    elsewhere.endpoint = mtls_rx.traces_url.replace("127.0.0.1", "localhost")
    details = await refused(client.set(elsewhere))
    assert "traces.tls.client_key_pem: masked value sent, but no key is stored" in details
    details = await refused(client.test(elsewhere))
    assert "traces.tls.client_key_pem: masked value sent" in details


async def test_query_values_are_secrets_masked_kept_on_round_trip_and_never_logged(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    redaction.install()  # on the capturing handler too, as the gateway does on every handler
    with QueryRecordingReceiver() as rx:
        endpoint = f"{rx.traces_url}?api_key={SECRET_QUERY}&tenant=acme-tenant-01&flag"
        reply = await client.set(section("http/proto", endpoint, enabled=True))
        masked = f"{rx.traces_url}?api_key={MASK}&tenant={MASK}&flag"
        assert reply.config.traces.endpoint == masked
        shown = (await client.get()).config
        assert shown.traces.endpoint == masked
        await client.set(shown.traces)  # the masks go back: the stored values stay
        await client.export_one()
        assert rx.targets
        assert set(rx.targets) == {f"/v1/traces?api_key={SECRET_QUERY}&tenant=acme-tenant-01&flag"}
        # A value changed by hand is taken; the other mask still keeps its value.
        changed = shown.traces.endpoint.replace(f"tenant={MASK}", "tenant=other")
        await client.set(otel_config_pb2.ExporterConfig(endpoint=changed, enabled=True))
        assert client.gw.otel.settings.traces.endpoint.endswith(
            f"?api_key={SECRET_QUERY}&tenant=other&flag"
        )
        # Another origin: refused, naming the parameter, never its value.
        details = await refused(client.set(section("http/json", masked.replace(str(rx.port), "1"))))
        assert "traces.endpoint[?'api_key']: masked value sent" in details
        history = await client.admin.ListOtelConfigHistory(
            admin_pb2.ListOtelConfigHistoryRequest(), timeout=10
        )
    for text in (json_format.MessageToJson(history), details, caplog.text):
        assert SECRET_QUERY not in text
    applied = [r.getMessage() for r in caplog.records if "OTLP export changed" in r.getMessage()]
    assert applied
    assert all(f"api_key={MASK}" in line for line in applied)


async def test_the_state_file_keeps_the_key_like_header_values_0600(
    pki: Pki,
    client: Client,
    mtls_rx: TlsHttpOtlpReceiver,
) -> None:
    await client.set(section("http/proto", mtls_rx.traces_url, tls_config(pki.ca, pki.client)))
    path = client.gw.config.server.state_dir / OTEL_CONFIG_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    newest = json.loads(path.read_text())["history"][0]["traces"]
    assert newest["tls"]["client_key_pem"] == pki.client.key_pem.decode()


# --- the data plane's view ----------------------------------------------------------------------


def test_settings_never_print_a_secret_and_exporters_register_theirs_with_the_redactor(
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tls = TlsSettings(
        ca_pem=pki.ca.cert_pem.decode(),
        client_cert_pem=pki.client.cert_pem.decode(),
        client_key_pem=pki.client.key_pem.decode(),
    )
    settings = ExporterSettings(
        enabled=True,
        endpoint=f"https://127.0.0.1:4318/v1/traces?api_key={SECRET_QUERY}",
        headers=(("authorization", "Bearer hdr-secret-123456"),),
        tls=tls,
    )
    for text in (repr(settings), str(settings), repr(tls)):
        assert_no_key(text, pki.client)
        assert SECRET_QUERY not in text
        assert "hdr-secret-123456" not in text
    assert set(key_lines(pki.client)) <= set(settings.secrets)
    assert SECRET_QUERY in settings.secrets
    assert mask_query(settings.endpoint, MASK).endswith(f"?api_key={MASK}")
    line = key_lines(pki.client)[1]
    library = logging.getLogger("urllib3.connectionpool")  # a library logger we do not own
    caplog.set_level(logging.DEBUG, logger="urllib3")
    redaction.install()  # on the capturing handler too, as the gateway does on every handler
    exporter = build_span_exporter(settings)
    library.debug("echoed %s and %s", line, SECRET_QUERY)
    assert line not in caplog.text
    assert SECRET_QUERY not in caplog.text
    exporter.shutdown()
    del exporter
    gc.collect()
    # A collected exporter is forgotten at the redactor's next change (its finalizer may run
    # inside one, so it only queues): any owner's change will do.
    redaction.REDACTOR.set_secrets("another-owner", ())
    caplog.clear()
    library.debug("gone %s", line)
    assert line in caplog.text  # unregistered with the exporter


# --- the environment ----------------------------------------------------------------------------


async def test_the_standard_tls_variables_seed_inline_pem_and_export_with_mtls(
    pki: Pki,
    gateway_factory: GatewayFactory,
    mtls_rx: TlsHttpOtlpReceiver,
    tmp_path: Path,
) -> None:
    ca = pki.ca.write(tmp_path / "ca.pem")
    cert, key = pki.client.write(tmp_path, "client")
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": mtls_rx.endpoint,
        "OTEL_EXPORTER_OTLP_CERTIFICATE": str(ca),
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE": str(cert),
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY": str(key),
        "OTEL_METRICS_EXPORTER": "none",
    }
    gw = await gateway_factory(env=env)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
        c = Client(gw, channel)
        shown = (await c.get()).config
        assert shown.traces.tls.ca_pem == pki.ca.cert_pem.decode()
        assert shown.traces.tls.client_cert_pem == pki.client.cert_pem.decode()
        assert shown.traces.tls.client_key_pem == MASK
        assert shown.metrics.tls.ca_pem == pki.ca.cert_pem.decode()  # the generic variable
        assert shown.metrics.tls.client_key_pem == ""
        await c.export_one()
    assert len(mtls_rx.spans()) >= 1
    assert mtls_rx.client_subjects


@pytest.mark.parametrize(
    ("variable", "content", "problem"),
    [
        ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", None, "cannot read"),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", b"-----BEGIN PRIVATE KEY-----\nbm9wZQ==\n", "PEM"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", b"\x30\x82\x01\x0a binary", "not a PEM file"),
    ],
    ids=["missing", "bad-key", "der"],
)
async def test_a_bad_tls_variable_stops_the_start_naming_it_without_the_content(
    pki: Pki,
    gateway_factory: GatewayFactory,
    tmp_path: Path,
    variable: str,
    content: bytes | None,
    problem: str,
) -> None:
    path = tmp_path / "file.pem"
    if content is not None:
        path.write_bytes(content)
    cert, _ = pki.client.write(tmp_path, "client")
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://127.0.0.1:4318",
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(cert),
        variable: str(path),
    }
    with pytest.raises(InvalidConfig) as info:
        await gateway_factory(env=env)
    text = str(info.value)
    assert problem in text
    assert variable in text or "client_key_pem" in text, text
    assert "bm9wZQ" not in text


async def test_insecure_only_chooses_the_scheme_of_a_scheme_less_grpc_endpoint(
    gateway_factory: GatewayFactory,
) -> None:
    base = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "127.0.0.1:4317"}
    for insecure, scheme in (("true", "http"), ("false", "https"), (None, "https")):
        env = dict(base) if insecure is None else {**base, "OTEL_EXPORTER_OTLP_INSECURE": insecure}
        gw = await gateway_factory(env=env)
        assert gw.otel.settings.traces.endpoint == f"{scheme}://127.0.0.1:4317", insecure
        assert not gw.otel.settings.traces.tls.insecure_skip_verify  # not what INSECURE means


# --- aigw-admin ---------------------------------------------------------------------------------


async def test_aigw_admin_tls_flags_read_pem_files_and_keep_the_key_masked(
    pki: Pki,
    client: Client,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AIGW_ADMIN_TOKEN", raising=False)
    ca = pki.ca.write(tmp_path / "ca.pem")
    cert, key = pki.client.write(tmp_path, "client")

    async def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        argv = ("--addr", f"127.0.0.1:{client.gw.port}", "--timeout", "20", *argv)
        try:
            code = await asyncio.to_thread(cli.main, list(argv))
        except SystemExit as e:  # argparse's own errors
            code = int(e.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    tls = ServerTls(pki.wrong_host.cert_pem, pki.wrong_host.key_pem, pki.ca.cert_pem)
    with TlsHttpOtlpReceiver(tls) as rx:
        flags = ["--traces-protocol", "http", "--traces-endpoint", rx.traces_url]
        pem = ["--traces-ca-file", str(ca), "--traces-cert-file", str(cert)]
        pem += ["--traces-key-file", str(key), "--traces-min-tls", "1.2"]
        code, out, _ = await run("otel", "test", *flags, *pem)
        assert code == 1
        assert '"reason": "tls"' in out  # collector.example's certificate, reached by IP
        name = ["--traces-server-name", "collector.example"]
        code, out, err = await run("otel", "set", "--traces-enabled", "true", *flags, *pem, *name)
        assert code == 0, err
        code, out, _ = await run("otel", "get")
        assert f'"clientKeyPem": "{MASK}"' in out
        # A later edit sends the masked key back: the stored one stays and still works.
        code, _, err = await run("otel", "set", "--traces-timeout", "3s")
        assert code == 0, err
        await client.export_one()
        assert len(rx.spans()) >= 2
        code, out, _ = await run("otel", "test", "--traces-server-name", "elsewhere.example")
        assert code == 1
        assert "hostname" in out or "mismatch" in out
        skip = ["--traces-clear-tls", "--traces-insecure-skip-verify"]
        mtls = ["--traces-cert-file", str(cert), "--traces-key-file", str(key)]
        code, out, err = await run("otel", "set", *skip, *mtls)
        assert code == 0, err
        assert "insecure_skip_verify" in out  # the warning, in the answer
        shown = (await client.get()).config.traces
        assert (shown.tls.ca_pem, shown.tls.insecure_skip_verify) == ("", True)
        code, out, err = await run("otel", "test", "--traces-key-file", str(tmp_path / "absent"))
        assert code == 2
        assert "absent" in err
    for text in (out, err):
        assert_no_key(text, pki.client)


# --- the fleet: sealed at rest ------------------------------------------------------------------


async def test_the_shared_store_seals_the_key_and_query_values_and_every_replica_uses_them(
    pki: Pki,
    gateway_factory: GatewayFactory,
    fleet_env: dict[str, str],
    mtls_rx: TlsHttpOtlpReceiver,
) -> None:
    gws = [await gateway_factory(env=fleet_env, store=FAST) for _ in range(2)]
    endpoint = f"{mtls_rx.traces_url}?api_key={SECRET_QUERY}"
    pb = section("http/proto", endpoint, tls_config(pki.ca, pki.client), enabled=True)
    await call(
        gws[0],
        "SetOtelConfig",
        admin_pb2.SetOtelConfigRequest(config=otel_config_pb2.OtelConfig(traces=pb)),
    )

    async def both_on_1() -> bool:
        return await versions(gws) == [1, 1]

    await eventually(both_on_1, "both replicas on version 1")
    replica = gws[1].otel.settings.traces
    assert replica.tls.client_key_pem == pki.client.key_pem.decode()
    assert replica.endpoint == endpoint
    for gw in gws:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            await Client(gw, channel).export_one()
    assert len(mtls_rx.client_subjects) >= 2  # both replicas presented the client certificate

    with psycopg.connect(fleet_env["AIGW_DATABASE_URL"]) as conn:
        rows = [
            text
            for (text,) in conn.execute(
                "SELECT row_to_json(c)::text FROM aigw_otel_config c"
            ).fetchall()
        ]
        config = conn.execute("SELECT config FROM aigw_otel_config").fetchone()[0]
    assert rows
    for text in rows:
        assert_no_key(text, pki.client)
        assert SECRET_QUERY not in text
    assert config["traces"]["endpoint"] == f"{mtls_rx.traces_url}?api_key={MASK}"
    assert config["traces"]["tls"]["client_key_pem"] == ""
    assert config["traces"]["tls"]["client_cert_pem"] == pki.client.cert_pem.decode()


@pytest.fixture
def fleet_env(database_url: str) -> dict[str, str]:
    from admin.secret_box import new_key

    return {"AIGW_DATABASE_URL": database_url, "AIGW_CONFIG_KEY": new_key()}
