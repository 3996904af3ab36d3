"""Certificate rotation on the gRPC listener: replacing the files while a stream runs lets the
stream complete and serves the next connection the new certificate; a corrupt replacement keeps
the old one, a symlink swap rotates like cert-manager, touching the files reloads nothing.
"""

from __future__ import annotations

import logging
import os
import time

import grpc
import pytest
from aigw.v1 import completion_pb2_grpc

from tests.certs import CertificateAuthority
from tests.conftest import GatewayFactory, chat
from tests.tls_listener_support import (  # noqa: F401 - fixtures
    SLOW_ECHO,
    Pki,
    _clean_cli_env,
    aserved,
    assert_no_key_material,
    cas_fixture,
    channel,
    complete,
    der,
    pki_fixture,
    refused,
    replace_atomically,
)

# --- rotation -----------------------------------------------------------------------------------


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
