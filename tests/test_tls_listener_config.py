"""TLS listener settings: the warning when serving off loopback without TLS, and every TLS file
problem reported at load (and by `aigw serve`, exit 2) without key material.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from aigw.v1 import admin_pb2, admin_pb2_grpc
from cryptography.hazmat.primitives import serialization

from gateway.config import load_config
from gateway.server import Gateway
from gateway.tls import TlsFileError, is_loopback_host
from tests.clients import connect
from tests.conftest import GatewayFactory, make_config
from tests.processes import clean_env
from tests.tls_listener_support import (  # noqa: F401 - fixtures
    Pki,
    _clean_cli_env,
    assert_no_key_material,
    cas_fixture,
    pki_fixture,
    problems_of,
    write_config,
)

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
        async with connect(started[-1]) as ch:
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
        # It exits before listening, so start_gateway_process (which waits for that) is not for it.
        env=clean_env({"AIGW_STATE_DIR": str(tmp_path / "state")}),
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
