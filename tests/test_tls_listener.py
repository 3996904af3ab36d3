"""TLS on the gRPC listener, with real handshakes: the real grpcurl, gRPC clients and aigw-admin
against a live gateway serving certificates made at test time (tests/certs.py), and the
README's TLS commands run as written. The private key never reaches a log line, an error or a
response.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shlex
import subprocess

import pytest

from tests.conftest import GatewayFactory
from tests.tls_listener_support import (  # noqa: F401 - fixtures
    GRPCURL,
    README,
    Pki,
    _clean_cli_env,
    agrpcurl,
    assert_no_key_material,
    cas_fixture,
    channel,
    complete,
    pki_fixture,
    refused,
    run_cli,
)

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
