"""What one OTLP exporter needs to know: the data plane's view of the OTEL config.

The control plane (`admin/otel_config.py`) turns API messages and environment variables into
these values and validates them; the data plane only builds exporters from them. Defaults live
here, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote_plus, urlsplit

__all__ = [
    "DEFAULT_EXPORT_INTERVAL",
    "DEFAULT_TIMEOUT",
    "ExporterSettings",
    "OtelSettings",
    "TlsSettings",
    "mask_query",
    "query_values",
]

DEFAULT_TIMEOUT = 5.0
DEFAULT_EXPORT_INTERVAL = 60.0

# The vocabulary: a new value goes here and into the proto enum (`<ENUM>_<VALUE>`);
# admin/otel_vocabulary.py derives the API's enum mapping and the accepted values from these.
Protocol = Literal["http", "grpc"]
Encoding = Literal["proto", "json"]
Compression = Literal["none", "gzip"]
Temporality = Literal["cumulative", "delta"]
TlsVersion = Literal["1.2", "1.3"]

_PEM_BEGIN = "-----BEGIN"


@dataclass(frozen=True, kw_only=True)
class TlsSettings:
    """TLS towards an https:// endpoint (the OpenTelemetry Collector's configtls, inline PEM).

    `client_key_pem` is a secret, like a header value: never in `repr`, masked by the API,
    sealed at rest in a shared store.
    """

    # PEM CA certificate(s): the only roots trusted; "" means the default roots (certifi's).
    ca_pem: str = ""
    # PEM client certificate chain and its unencrypted PEM private key, for mTLS.
    client_cert_pem: str = ""
    client_key_pem: str = ""
    # The name the backend's certificate must be valid for (and the SNI); "" means the host.
    server_name: str = ""
    min_version: TlsVersion = "1.2"
    insecure_skip_verify: bool = False

    @property
    def configured(self) -> bool:
        """Anything other than the defaults."""
        return self != TlsSettings()

    @property
    def secrets(self) -> tuple[str, ...]:
        """What must never be logged: the key's base64 body, line by line (the PEM armour
        lines are not secret, and redacting "-----BEGIN" everywhere would shred certificates)."""
        return tuple(
            line.strip()
            for line in self.client_key_pem.splitlines()
            if line.strip() and not line.strip().startswith(("-----", "Proc-Type", "DEK-Info"))
        )

    def __repr__(self) -> str:
        return (
            f"TlsSettings(ca_pem={_pem_count(self.ca_pem)}, "
            f"client_cert_pem={_pem_count(self.client_cert_pem)}, "
            f"client_key_pem={'set' if self.client_key_pem else 'unset'}, "
            f"server_name={self.server_name!r}, min_version={self.min_version!r}, "
            f"insecure_skip_verify={self.insecure_skip_verify})"
        )


def _pem_count(pem: str) -> str:
    n = pem.count(_PEM_BEGIN)
    return f"{n} PEM block{'s' if n != 1 else ''}"


def _split_query(endpoint: str) -> tuple[str, list[str], str]:
    """(what precedes "?", the query's NAME=VALUE pairs as written, "#fragment" or "")."""
    rest, hash_, fragment = endpoint.partition("#")
    base, question, query = rest.partition("?")
    return base, query.split("&") if question else [], hash_ + fragment


def mask_query(endpoint: str, mask: str) -> str:
    """`endpoint` with every non-empty query value replaced by `mask` (`?api_key=********`)."""
    base, pairs, fragment = _split_query(endpoint)
    if not pairs:
        return endpoint
    masked = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        masked.append(f"{name}={mask}" if sep and value else pair)
    return f"{base}?{'&'.join(masked)}{fragment}"


def query_values(endpoint: str) -> tuple[str, ...]:
    """The values in `endpoint`'s query string, raw and decoded: secrets like header values
    (`?api_key=…`)."""
    try:
        query = urlsplit(endpoint).query
    except ValueError:
        return ()
    values: list[str] = []
    for pair in query.split("&"):
        _, sep, value = pair.partition("=")
        if sep and value:
            values += [value, unquote_plus(value)]
    return tuple(dict.fromkeys(values))


@dataclass(frozen=True, kw_only=True)
class ExporterSettings:
    enabled: bool = False
    protocol: Protocol = "http"
    # Complete URL: with the signal path for HTTP, scheme://host:port for gRPC.
    endpoint: str = ""
    encoding: Encoding = "proto"
    # Lowercase names; the values are secrets (API keys, tokens).
    headers: tuple[tuple[str, str], ...] = ()
    # Seconds, the whole budget of one export including retries. Short on purpose: a dead
    # backend then costs queued spans, never a stuck worker.
    timeout: float = DEFAULT_TIMEOUT
    compression: Compression = "none"
    # Metrics only.
    export_interval: float = DEFAULT_EXPORT_INTERVAL
    temporality: Temporality = "cumulative"
    tls: TlsSettings = field(default_factory=TlsSettings)

    @property
    def header_dict(self) -> dict[str, str]:
        return dict(self.headers)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret this exporter holds, for redaction: header values, the endpoint's query
        values and the TLS private key."""
        return (
            *(v for _, v in self.headers if v),
            *query_values(self.endpoint),
            *self.tls.secrets,
        )

    def __repr__(self) -> str:
        # Header values, query values and the private key are secrets: a stray log of this
        # object must not print them.
        names = ", ".join(name for name, _ in self.headers)
        endpoint = self.endpoint.split("?", 1)[0] + ("?…" if "?" in self.endpoint else "")
        return (
            f"ExporterSettings(enabled={self.enabled}, protocol={self.protocol!r}, "
            f"endpoint={endpoint!r}, encoding={self.encoding!r}, headers=[{names}], "
            f"timeout={self.timeout}, compression={self.compression!r}, "
            f"export_interval={self.export_interval}, temporality={self.temporality!r}, "
            f"tls={self.tls!r})"
        )


@dataclass(frozen=True, kw_only=True)
class OtelSettings:
    traces: ExporterSettings = field(default_factory=ExporterSettings)
    metrics: ExporterSettings = field(default_factory=ExporterSettings)
    # Increases by one with every applied change; 0 for defaults or environment seeding.
    version: int = 0
