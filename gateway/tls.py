"""TLS on the gRPC listener: the certificate files, mTLS, and rotation without a restart.

`[server] tls_cert_file` (the certificate, then any intermediates, PEM) and `tls_key_file` (its
unencrypted PEM private key) turn the listener to TLS; `client_ca_file` (PEM, one or more CAs)
makes it mutual: a client must present a certificate that CA issued, or the handshake fails.
`check_files` validates the files when the config is loaded (every problem, none of the key's
bytes); `ServerCertificates` serves them.

Rotation
    The listener uses grpcio's dynamic server credentials: gRPC core asks
    `ServerCertificates.fetch` for the configuration before every new TLS handshake. `fetch`
    stats the files (a few microseconds) and, only when a file's inode, size, mtime or ctime
    moved, reads all of them and compares a hash of their content with what is being served.
    New, consistent content (PEM that parses, a key that matches the certificate, a CA file
    with at least one certificate) becomes the configuration for that handshake and every later
    one, logged once at INFO with its subject and not-after. Calls in flight, and connections
    already established, are untouched: they keep the session they negotiated, so nothing is
    dropped. A client sees the new certificate when it next connects (a new channel, or a
    reconnect after the connection closes; `GRPC_ARG_MAX_CONNECTION_AGE` would force that).

    Files caught half-written, or a certificate next to the old key, are not served: the
    certificate in use stays, one WARNING names the file and the problem (never key material),
    and the next handshake after the files move again tries anew. That is what makes the usual
    rotations safe:

    - cert-manager and Kubernetes Secret volumes: the kubelet writes the new files into a fresh
      directory and swaps the `..data` symlink atomically, so certificate and key change
      together; stat follows the links and sees new inodes.
    - certbot: `live/NAME/*.pem` are symlinks re-pointed one at a time to new `archive/` files;
      between two re-points the certificate does not match the key and is skipped (a WARNING
      at most), the next handshake after the last one picks up the pair.
    - by hand: write each file to a temporary name and `mv` it into place (an atomic rename);
      replace the key before the certificate, or accept one WARNING in between. Copying over a
      file in place works too, a handshake that reads it half-written is served the old one.

    Nothing needs to be signalled: no SIGHUP, no restart. An expired or not-yet-valid
    certificate is served (clients will refuse it) with a WARNING at start and on rotation.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = [
    "ServerCertificates",
    "TlsFileError",
    "TlsFiles",
    "TlsMaterial",
    "check_files",
    "is_loopback_host",
    "load_material",
]

_log = logging.getLogger(__name__)

CERT_KEY = "server.tls_cert_file"
KEY_KEY = "server.tls_key_file"
CA_KEY = "server.client_ca_file"


@dataclass(frozen=True)
class TlsFiles:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    def paths(self) -> tuple[Path, ...]:
        ca = (self.client_ca_file,) if self.client_ca_file is not None else ()
        return (self.cert_file, self.key_file, *ca)


class TlsFileError(OSError):
    """Certificate files that cannot be served; `problems` are (config key, problem) pairs.

    An OSError, so `aigw serve` reports it like any other listener that cannot start.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key}: {problem}" for key, problem in problems))


@dataclass(frozen=True)
class TlsMaterial:
    """The files' content, checked: what one server certificate configuration is made of."""

    files: TlsFiles
    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None
    leaf: x509.Certificate
    digest: str

    @property
    def subject(self) -> str:
        return self.leaf.subject.rfc4514_string()

    @property
    def not_after(self) -> dt.datetime:
        return self.leaf.not_valid_after_utc

    def describe(self) -> str:
        return f"subject {self.subject!r}, not after {self.not_after:%Y-%m-%dT%H:%M:%SZ}"

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.private_key, self.cert_chain)], root_certificates=self.client_ca
        )


def _read(path: Path, key: str, problems: list[tuple[str, str]]) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        problems.append((key, f"{path}: no such file"))
    except PermissionError:
        problems.append((key, f"{path}: permission denied"))
    except IsADirectoryError:
        problems.append((key, f"{path}: is a directory, not a file"))
    except OSError as e:
        problems.append((key, f"{path}: cannot read: {e.strerror or type(e).__name__}"))
    return None


def _certificates(data: bytes, path: Path, key: str, problems: list[tuple[str, str]]) -> list:
    if b"-----BEGIN CERTIFICATE-----" not in data:
        problems.append((key, f"{path}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it"))
        return []
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        problems.append((key, f"{path}: not a valid PEM certificate"))
        return []


def _private_key(data: bytes, path: Path, problems: list[tuple[str, str]]) -> object | None:
    # Messages are ours, never the library's: nothing of the key may reach a log line.
    if b"PRIVATE KEY-----" not in data:
        problems.append((KEY_KEY, f"{path}: no PEM private key (-----BEGIN PRIVATE KEY-----)"))
        return None
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        problems.append(
            (KEY_KEY, f"{path}: an encrypted private key; gRPC takes no passphrase, decrypt it")
        )
    except Exception:  # whatever the parser says could quote the key
        problems.append((KEY_KEY, f"{path}: not a valid PEM private key"))
    return None


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_material(files: TlsFiles) -> TlsMaterial:
    """Read and check the files; TlsFileError lists every problem found."""
    problems: list[tuple[str, str]] = []
    # File by file, in the config's order: read, then parse.
    chain = _read(files.cert_file, CERT_KEY, problems)
    certs = _certificates(chain, files.cert_file, CERT_KEY, problems) if chain is not None else []
    key_pem = _read(files.key_file, KEY_KEY, problems)
    key = _private_key(key_pem, files.key_file, problems) if key_pem is not None else None
    ca_pem = None
    if files.client_ca_file is not None:
        ca_pem = _read(files.client_ca_file, CA_KEY, problems)
        if ca_pem is not None:
            _certificates(ca_pem, files.client_ca_file, CA_KEY, problems)
    if certs and key is not None:
        try:
            matches = _spki(certs[0].public_key()) == _spki(key.public_key())  # type: ignore[attr-defined]
        except Exception:  # an odd key type: say so, quote nothing
            matches = False
        if not matches:
            problems.append(
                (
                    KEY_KEY,
                    f"{files.key_file}: does not match the certificate in {files.cert_file}",
                )
            )
    if problems:
        raise TlsFileError(problems)
    assert chain is not None
    assert key_pem is not None
    digest = hashlib.sha256()
    for part in (chain, key_pem, ca_pem or b""):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return TlsMaterial(
        files=files,
        cert_chain=chain,
        private_key=key_pem,
        client_ca=ca_pem,
        leaf=certs[0],
        digest=digest.hexdigest(),
    )


def check_files(
    cert_file: Path | None, key_file: Path | None, client_ca_file: Path | None
) -> list[tuple[str, str]]:
    """The config's view: (key, problem) pairs, empty when the listener can serve these."""
    problems: list[tuple[str, str]] = []
    if cert_file is None and key_file is None:
        if client_ca_file is not None:
            problems.append((CA_KEY, "needs tls_cert_file and tls_key_file (mTLS is on TLS)"))
        return problems
    if cert_file is None:
        problems.append((CERT_KEY, "required with tls_key_file"))
    if key_file is None:
        problems.append((KEY_KEY, "required with tls_cert_file"))
    if problems:
        return problems
    assert cert_file is not None
    assert key_file is not None
    try:
        load_material(TlsFiles(cert_file, key_file, client_ca_file))
    except TlsFileError as e:
        return e.problems
    return []


def _validity_warning(material: TlsMaterial) -> None:
    now = dt.datetime.now(dt.UTC)
    leaf = material.leaf
    if leaf.not_valid_after_utc < now:
        _log.warning(
            "TLS: the certificate in %s expired at %s; clients will refuse it",
            material.files.cert_file,
            f"{leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}",
        )
    elif leaf.not_valid_before_utc > now:
        _log.warning(
            "TLS: the certificate in %s is not valid before %s; clients will refuse it until then",
            material.files.cert_file,
            f"{leaf.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}",
        )


def _signature(paths: tuple[Path, ...]) -> tuple[object, ...]:
    """What changes when a file is rewritten, renamed over, or a symlink re-pointed."""
    marks: list[object] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as e:
            marks.append(("error", e.errno))
        else:
            marks.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(marks)


class ServerCertificates:
    """The listener's certificate, re-read when the files change; see the module docstring."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._seen = _signature(files.paths())
        self._current = load_material(files)  # TlsFileError: the listener cannot start
        self._warned = ""
        _log.info(
            "TLS: serving the certificate in %s (%s)%s",
            files.cert_file,
            self._current.describe(),
            ", clients must present a certificate from " + str(files.client_ca_file)
            if files.client_ca_file is not None
            else "",
        )
        _validity_warning(self._current)

    @property
    def current(self) -> TlsMaterial:
        return self._current

    @property
    def mutual(self) -> bool:
        return self.files.client_ca_file is not None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._current.configuration(),
            self.fetch,
            require_client_authentication=self.mutual,
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC core's question before a handshake: None keeps the configuration in use."""
        try:
            with self._lock:
                return self._fetch()
        except Exception:  # never fail a handshake over a reload
            _log.warning("TLS: checking %s for a new certificate failed", self.files.cert_file)
            return None

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        seen = _signature(self.files.paths())
        if seen == self._seen:
            return None
        self._seen = seen
        try:
            material = load_material(self.files)
        except TlsFileError as e:
            message = "; ".join(problem for _, problem in e.problems)
            if message != self._warned:
                self._warned = message
                _log.warning(
                    "TLS: not serving the changed files: %s; still serving the certificate "
                    "loaded before (%s)",
                    message,
                    self._current.describe(),
                )
            return None
        self._warned = ""
        if material.digest == self._current.digest:
            return None  # touched, or replaced by the same content
        self._current = material
        _log.info(
            "TLS: new certificate in use from %s (%s)", self.files.cert_file, material.describe()
        )
        _validity_warning(material)
        return material.configuration()


def is_loopback_host(host: str) -> bool:
    """Whether a listen host is reachable only from this machine: 127.0.0.0/8, ::1, localhost."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)
