"""TLS for the OTLP exporters, built from an exporter's `TlsSettings` and nothing else.

One rule for every transport: **the exporter's settings decide what is trusted, never the
process environment.** With `ca_pem` set, exactly those CAs are trusted; without it, the Mozilla
roots as certifi ships them (what `requests` and `httpx` trust by default). So none of the
variables machines commonly carry changes an exporter's trust:

- ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``: `requests` would put them in place of a session's
  ``verify`` (``Session.merge_environment_settings``), and urllib3 would *add* them to a given
  SSLContext. `TlsAdapter` ignores the ``verify`` and ``cert`` a request carries;
- ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``: read by httpx (``trust_env``) and by OpenSSL's default
  paths. We hand httpx a ready SSLContext and never load the default paths;
- ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``: gRPC's roots when none are given. We always give them;
- ``OTEL_EXPORTER_OTLP_*CERTIFICATE`` / ``*CLIENT_KEY``: the official exporters read them at
  build time. They are read once, when the config is seeded from the environment
  (`admin/otel_env.py`); after that the config holds the PEM.

The client key never touches the disk: Python's ssl loads a certificate chain only from a path,
so the PEM goes through an anonymous in-memory file (``memfd_create``, opened as
``/proc/self/fd/N``) — or, where that does not exist, a 0600 file in a 0700 temporary
directory, removed as soon as it is loaded.

What each library allows:

=====================  ===========================  ===========================  ==============
setting                HTTP + protobuf (requests)   HTTP + JSON (httpx)          gRPC (grpcio)
=====================  ===========================  ===========================  ==============
ca_pem                 SSLContext                   SSLContext                   root certs
client cert + key      SSLContext                   SSLContext                   key + chain
server_name            urllib3 ``server_hostname``  ``sni_hostname`` extension   target name
                                                                                 override
min_version 1.2 / 1.3  SSLContext                   SSLContext                   1.2 only (*)
insecure_skip_verify   SSLContext + CERT_NONE       SSLContext + CERT_NONE       refused (*)
=====================  ===========================  ===========================  ==============

(*) grpcio offers no minimum-version setting (BoringSSL's floor is TLS 1.2, and it negotiates
1.3 whenever the backend offers it) and no way to skip verification; the model refuses both
rather than ignore them (`admin/otel_config.py`). A self-signed backend is trusted over gRPC by
giving its certificate as `ca_pem`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import ssl
import tempfile
from collections.abc import Iterator
from typing import Any

import certifi
import grpc
from requests.adapters import HTTPAdapter

from gateway.telemetry.export_settings import TlsSettings

__all__ = [
    "TlsAdapter",
    "default_roots_pem",
    "grpc_channel_options",
    "grpc_credentials",
    "ssl_context",
]


@functools.cache
def default_roots_pem() -> bytes:
    """The roots trusted when no `ca_pem` is given: certifi's Mozilla bundle."""
    with open(certifi.where(), "rb") as f:
        return f.read()


@contextlib.contextmanager
def _pem_paths(*pems: str) -> Iterator[list[str]]:
    """Paths that read as `pems`, for APIs that only take paths; nothing stays on disk."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fds: list[int] = []
        try:
            for pem in pems:
                fd = os.memfd_create("aigw-otlp-tls", os.MFD_CLOEXEC)
                fds.append(fd)
                data = memoryview(pem.encode("ascii"))
                while data:
                    data = data[os.write(fd, data) :]
            yield [f"/proc/self/fd/{fd}" for fd in fds]
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="aigw-otlp-tls-") as directory:  # created 0700
        paths = []
        for index, pem in enumerate(pems):
            path = os.path.join(directory, f"{index}.pem")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(pem)
            paths.append(path)
        yield paths


def ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """The client SSLContext `tls` describes (HTTP exporters), from no environment variable."""
    if not (tls.insecure_skip_verify or tls.ca_pem or tls.client_cert_pem):
        return _public_roots_context(tls.min_version)
    return _new_context(tls)


@functools.lru_cache(maxsize=4)
def _public_roots_context(min_version: str) -> ssl.SSLContext:
    """The context of every section without TLS settings of its own, made once per process:
    parsing certifi's bundle takes ~40 ms, which every config change paid (for each exporter,
    https or not). It holds no secret, and nothing changes a context once made."""
    return _new_context(TlsSettings(min_version=min_version))  # type: ignore[arg-type]


def _new_context(tls: TlsSettings) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname on
    context.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif tls.ca_pem:
        context.load_verify_locations(cadata=tls.ca_pem)
    else:
        context.load_verify_locations(cafile=certifi.where())
    if tls.client_cert_pem:
        with _pem_paths(tls.client_cert_pem, tls.client_key_pem) as (cert_path, key_path):
            context.load_cert_chain(cert_path, key_path)
    return context


def grpc_credentials(tls: TlsSettings) -> grpc.ChannelCredentials:
    """Channel credentials for an https:// gRPC endpoint: always with explicit roots, so
    ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`` never applies."""
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca_pem.encode("ascii") if tls.ca_pem else default_roots_pem(),
        private_key=tls.client_key_pem.encode("ascii") if tls.client_key_pem else None,
        certificate_chain=tls.client_cert_pem.encode("ascii") if tls.client_cert_pem else None,
    )


def grpc_channel_options(tls: TlsSettings) -> tuple[tuple[str, Any], ...]:
    """The server name override as gRPC spells it (SNI and the name verified)."""
    return (("grpc.ssl_target_name_override", tls.server_name),) if tls.server_name else ()


class TlsAdapter(HTTPAdapter):
    """A `requests` adapter whose TLS is one SSLContext, whatever a request says.

    `requests` decides ``verify`` from the session, the call and — with ``trust_env`` — the
    ``REQUESTS_CA_BUNDLE`` and ``CURL_CA_BUNDLE`` variables, then hands it to the adapter, which
    would turn a path into urllib3's ``ca_certs`` (loaded *into* our context) and ``True`` into
    certifi's bundle. This adapter ignores both ``verify`` and ``cert`` and gives urllib3 the
    context and the server name, for direct and proxied (CONNECT) connections alike.
    """

    def __init__(self, tls: TlsSettings) -> None:
        self._context = ssl_context(tls)
        self._verify = not tls.insecure_skip_verify
        self._server_name = tls.server_name
        super().__init__()

    def build_connection_pool_key_attributes(
        self, request: Any, verify: Any, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host_params, _ = super().build_connection_pool_key_attributes(request, True, None)
        pool_kwargs: dict[str, Any] = {
            "ssl_context": self._context,
            "cert_reqs": "CERT_REQUIRED" if self._verify else "CERT_NONE",
        }
        if self._server_name:
            pool_kwargs["server_hostname"] = self._server_name
        return host_params, pool_kwargs

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        # Not the base class's: it would point urllib3 at certifi or the environment's bundle.
        conn.cert_reqs = "CERT_REQUIRED" if self._verify else "CERT_NONE"
        conn.ca_certs = conn.ca_cert_dir = None
        conn.cert_file = conn.key_file = None
