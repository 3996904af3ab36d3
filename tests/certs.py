"""Certificates made at test time with `cryptography`: CAs, server and client certificates.

    ca = CertificateAuthority("aigw test CA")
    server = ca.server()                      # for localhost and 127.0.0.1, valid for a day
    client = ca.client("operator")            # clientAuth, from the same CA
    expired = ca.server(expired=True)         # not after an hour ago
    wrong_host = ca.server(hosts=("other.example",))
    cert_file, key_file = server.write(tmp_path, "server")   # server.pem, server-key.pem
    ca.write(tmp_path / "ca.pem")

EC P-256 keys (fast to make; gRPC's BoringSSL, Go's crypto/tls and OpenSSL all take them),
PKCS#8 PEM, unencrypted. Shared by the listener tests and the export-side TLS tests.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["LOCAL_HOSTS", "CertificateAuthority", "Issued"]

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, as PEM."""

    cert: x509.Certificate
    cert_pem: bytes
    key_pem: bytes

    @property
    def subject(self) -> str:
        return self.cert.subject.rfc4514_string()

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """`DIR/NAME.pem` and `DIR/NAME-key.pem` (0600); answers both paths."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_file, key_file = directory / f"{name}.pem", directory / f"{name}-key.pem"
        cert_file.write_bytes(self.cert_pem)
        key_file.touch(mode=0o600)
        key_file.write_bytes(self.key_pem)
        return cert_file, key_file


class CertificateAuthority:
    """A self-signed root CA that issues leaf certificates."""

    def __init__(self, name: str = "aigw test CA") -> None:
        self.name = name
        self._key = _key()
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.cert_pem)
        return path

    def _issue(
        self,
        common_name: str,
        usage: x509.ObjectIdentifier,
        hosts: Sequence[str],
        expired: bool,
    ) -> Issued:
        key = _key()
        now = dt.datetime.now(dt.UTC)
        if expired:
            not_before, not_after = now - dt.timedelta(days=2), now - dt.timedelta(hours=1)
        else:
            not_before, not_after = now - dt.timedelta(hours=1), now + dt.timedelta(days=1)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if hosts:
            builder = builder.add_extension(_san(hosts), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return Issued(cert, cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    def server(
        self,
        hosts: Sequence[str] = LOCAL_HOSTS,
        *,
        common_name: str = "",
        expired: bool = False,
    ) -> Issued:
        """A serverAuth certificate for `hosts` (DNS names and IP addresses in the SAN)."""
        return self._issue(
            common_name or f"aigw server ({hosts[0]})",
            ExtendedKeyUsageOID.SERVER_AUTH,
            hosts,
            expired,
        )

    def client(self, common_name: str = "aigw test client", *, expired: bool = False) -> Issued:
        """A clientAuth certificate (no SAN) for mTLS."""
        return self._issue(common_name, ExtendedKeyUsageOID.CLIENT_AUTH, (), expired)
