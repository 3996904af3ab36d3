"""The OTEL config model: every rule an `OtelSettings` must satisfy, checked in one place.

`validate` collects every problem with its dotted field path (`traces.encoding: ENCODING_JSON
needs PROTOCOL_HTTP`), the way the OpenTelemetry Collector's confmap joins errors, so a rejected
Set changes nothing and the operator fixes everything in one round. The same rules hold for
settings from the API (`admin/otel_proto.py`), the environment (`admin/otel_env.py`) and a
stored file, so a hand-edited file cannot smuggle in what the API would refuse.

Header values, the endpoint's query values and the TLS private key are secrets: problems name
the header, the query parameter or the field, never the value (nor any of the key's bytes). The
API shows every such value as `MASK` and takes `MASK` back to mean "keep the stored value"
(`admin/otel_proto.py`); a `MASK` still standing where a value belongs is a problem here.

TLS (`<section>.tls.*`): PEM that parses (certificates with `cryptography`, the key unencrypted),
a key that matches its certificate, no key without a certificate or the reverse, an https://
endpoint, and what grpcio cannot do refused rather than silently ignored (a minimum of TLS 1.3,
skipping verification).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from admin.otel_vocabulary import LITERALS, TLS_VOCABULARY
from gateway.telemetry.export_settings import ExporterSettings, OtelSettings, TlsSettings

__all__ = [
    "INTERVAL_RANGE",
    "MASK",
    "MAX_ENDPOINT",
    "MAX_HEADERS",
    "MAX_HEADER_VALUE",
    "MAX_PEM",
    "SECTIONS",
    "TIMEOUT_RANGE",
    "InvalidConfig",
    "check_settings",
    "validate",
    "validate_section",
]

MASK = "********"
MAX_HEADERS = 32
MAX_HEADER_VALUE = 8192
MAX_ENDPOINT = 2048
# Characters of one PEM field: room for a corporate CA bundle, not for a data dump.
MAX_PEM = 256 * 1024
TIMEOUT_RANGE = (0.1, 60.0)
INTERVAL_RANGE = (1.0, 3600.0)
SECTIONS = ("traces", "metrics")

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Printable ASCII and tab: what both HTTP/1.1 and gRPC metadata carry without escaping.
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
# Set by the exporters themselves; a user value would break the request.
_RESERVED_HTTP = frozenset(
    {
        "content-type",
        "content-length",
        "content-encoding",
        "host",
        "transfer-encoding",
        "connection",
    }
)
_RESERVED_GRPC = frozenset({"content-type", "te", "user-agent", "host", "grpc-timeout"})
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class InvalidConfig(Exception):
    """Every problem found, each as (field path, problem)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {problem}" for path, problem in problems))


def validate(settings: OtelSettings) -> list[tuple[str, str]]:
    """Every problem in `settings`, each as (dotted field path, problem); [] when valid."""
    problems: list[tuple[str, str]] = []
    for section in SECTIONS:
        problems += validate_section(getattr(settings, section), section)
    return problems


def check_settings(settings: OtelSettings) -> list[tuple[str, str]]:
    """Every problem in settings that did not come through the API (a stored file)."""
    return validate(settings)


def validate_section(s: ExporterSettings, section: str) -> list[tuple[str, str]]:
    """Every problem in one section (`traces` or `metrics`), paths prefixed `<section>.`."""
    p = section + "."
    problems = [
        (p + field, "not a known value")
        for field, allowed in LITERALS.items()
        if getattr(s, field) not in allowed
    ]
    if any(not isinstance(getattr(s, f), int | float) for f in ("timeout", "export_interval")):
        problems.append((section, "timeout and export_interval must be numbers"))
        return problems
    if problems:
        return problems
    if s.protocol == "grpc" and s.encoding == "json":
        problems.append((p + "encoding", "ENCODING_JSON needs PROTOCOL_HTTP"))
    if s.endpoint:
        _endpoint(s.endpoint, s.protocol, p + "endpoint", problems)
    elif s.enabled:
        problems.append((p + "endpoint", "required when enabled"))
    _headers(s.header_dict, s.protocol, p + "headers", problems)
    _tls(s, p + "tls", problems)
    _within(s.timeout, TIMEOUT_RANGE, p + "timeout", problems)
    # export_interval and temporality apply to metrics only: a traces section's are ignored.
    if section == "metrics":
        _within(s.export_interval, INTERVAL_RANGE, p + "export_interval", problems)
    return problems


def _within(
    seconds: float, bounds: tuple[float, float], path: str, problems: list[tuple[str, str]]
) -> None:
    lo, hi = bounds
    if not lo <= seconds <= hi:
        problems.append(
            (path, f"must be between {_human(lo)} and {_human(hi)}, got {_human(seconds)}")
        )


def _human(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def _endpoint(url: str, protocol: str, path: str, problems: list[tuple[str, str]]) -> None:
    if len(url) > MAX_ENDPOINT:
        problems.append((path, f"at most {MAX_ENDPOINT} characters"))
        return
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        problems.append((path, "must not contain spaces or control characters"))
        return
    try:
        parts = urlsplit(url)
    except ValueError as e:  # e.g. an unclosed IPv6 bracket
        problems.append((path, f"not a valid URL ({type(e).__name__})"))
        return
    if parts.scheme not in ("http", "https"):
        # The URL itself is never echoed: a malformed one may still carry user:password@.
        problems.append((path, "must start with http:// or https://"))
        return
    if not parts.hostname:
        problems.append((path, "has no host"))
        return
    if parts.username is not None or parts.password is not None:
        problems.append((path, "must not carry credentials; put them in headers"))
        return
    try:
        port = parts.port
    except ValueError:
        problems.append((path, "port must be 1-65535"))
        return
    if port == 0:
        problems.append((path, "port must be 1-65535"))
        return
    if parts.fragment:
        problems.append((path, "must not have a #fragment"))
    for pair in parts.query.split("&") if parts.query else ():
        name, _, value = pair.partition("=")
        if unquote(value) == MASK:
            problems.append(
                (
                    f"{path}[?{unquote(name)[:64]!r}]",
                    "masked value sent, but no value is stored for this query parameter at "
                    "this endpoint's origin; send the value itself",
                )
            )
    if protocol == "grpc":
        if parts.path not in ("", "/"):
            problems.append(
                (
                    path,
                    f"a gRPC endpoint takes no path (got {parts.path[:80]!r}): the OTLP/gRPC "
                    "exporter would drop it; use scheme://host:port",
                )
            )
        if parts.query:
            problems.append((path, "a gRPC endpoint takes no ?query"))


def _headers(
    headers: Mapping[str, str], protocol: str, path: str, problems: list[tuple[str, str]]
) -> None:
    """Names as given (any case; the exporters send them lowercase), checked in sorted order."""
    if len(headers) > MAX_HEADERS:
        problems.append((path, f"at most {MAX_HEADERS} headers"))
        return
    accepted: set[str] = set()
    reserved = _RESERVED_GRPC if protocol == "grpc" else _RESERVED_HTTP
    for raw_name, value in sorted(headers.items()):
        name = raw_name.lower()
        where = f"{path}[{raw_name[:64]!r}]"
        if not _TOKEN.fullmatch(raw_name):
            problems.append(
                (where, "not a valid header name (letters, digits and !#$%&'*+-.^_`|~)")
            )
        elif name in accepted:
            problems.append((where, "given twice (names are case-insensitive)"))
        elif name in reserved or (protocol == "grpc" and name.startswith("grpc-")):
            problems.append((where, "set by the exporter itself; cannot be overridden"))
        elif protocol == "grpc" and name.endswith("-bin"):
            problems.append((where, "binary (-bin) metadata is not supported"))
        elif value == MASK:
            # The API swaps a mask for the value stored at the same origin; one left standing
            # had nothing to stand for.
            problems.append(
                (
                    where,
                    "masked value sent, but no value is stored for it at this endpoint's "
                    "origin; send the value itself",
                )
            )
        elif len(value) > MAX_HEADER_VALUE:
            problems.append((where, f"value longer than {MAX_HEADER_VALUE} characters"))
        elif not _HEADER_VALUE.fullmatch(value):
            # Never echo the value: it is usually a credential.
            problems.append(
                (
                    where,
                    "value must be printable ASCII (no CR, LF, NUL or other control characters)",
                )
            )
        else:
            accepted.add(name)


def _tls(s: ExporterSettings, path: str, problems: list[tuple[str, str]]) -> None:
    tls = s.tls
    p = path + "."
    if not isinstance(tls, TlsSettings):
        problems.append((path, "not TLS settings"))
        return
    if not all(
        isinstance(getattr(tls, f), str)
        for f in ("ca_pem", "client_cert_pem", "client_key_pem", "server_name")
    ) or not isinstance(tls.insecure_skip_verify, bool):
        problems.append(
            (path, "PEM fields and server_name must be text, insecure_skip_verify a bool")
        )
        return
    if tls.min_version not in TLS_VOCABULARY.literals:
        problems.append((p + "min_version", "not a known value"))
        return
    if not tls.configured:
        return
    if s.endpoint.lower().startswith("http://"):
        problems.append((path, "TLS settings need an https:// endpoint"))
    ca = _certificates(tls.ca_pem, p + "ca_pem", problems)
    chain = _certificates(tls.client_cert_pem, p + "client_cert_pem", problems)
    key = _private_key(tls.client_key_pem, p + "client_key_pem", problems)
    if tls.client_key_pem and not tls.client_cert_pem:
        problems.append((p + "client_key_pem", "needs client_cert_pem"))
    if tls.client_cert_pem and not tls.client_key_pem:
        problems.append((p + "client_cert_pem", "needs client_key_pem"))
    if chain and key is not None and not _same_public_key(chain[0], key):
        problems.append((p + "client_key_pem", "does not match client_cert_pem"))
    if tls.server_name and not _is_server_name(tls.server_name):
        problems.append((p + "server_name", "not a host name or IP address"))
    if tls.insecure_skip_verify:
        if ca:
            problems.append(
                (
                    p + "insecure_skip_verify",
                    "set together with ca_pem, which it would ignore; choose one",
                )
            )
        if s.protocol == "grpc":
            problems.append(
                (
                    p + "insecure_skip_verify",
                    "not supported with PROTOCOL_GRPC: grpcio cannot skip certificate "
                    "verification; give the backend's certificate (or its CA) as ca_pem",
                )
            )
    if tls.min_version == "1.3" and s.protocol == "grpc":
        problems.append(
            (
                p + "min_version",
                "TLS_VERSION_1_3 is not supported with PROTOCOL_GRPC: grpcio has no minimum "
                "version setting (it negotiates TLS 1.3 whenever the backend offers it)",
            )
        )


def _certificates(pem: str, path: str, problems: list[tuple[str, str]]) -> list[x509.Certificate]:
    if not pem:
        return []
    if len(pem) > MAX_PEM:
        problems.append((path, f"at most {MAX_PEM // 1024} KiB of PEM"))
        return []
    if "PRIVATE KEY" in pem:
        # A key pasted into a field that is shown and stored in clear: refused, never echoed.
        problems.append((path, "holds a private key; only client_key_pem takes one"))
        return []
    try:
        return x509.load_pem_x509_certificates(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        problems.append((path, "not a PEM certificate"))
        return []


def _private_key(pem: str, path: str, problems: list[tuple[str, str]]) -> object | None:
    """The key `pem` holds, or None (with a problem unless empty). Never echoes the key."""
    if not pem:
        return None
    if pem == MASK:
        problems.append(
            (
                path,
                "masked value sent, but no key is stored for this endpoint's origin; send the "
                "key itself",
            )
        )
        return None
    if len(pem) > MAX_PEM:
        problems.append((path, f"at most {MAX_PEM // 1024} KiB of PEM"))
        return None
    try:
        return serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    except TypeError:
        problems.append((path, "an encrypted key is not supported; give it unencrypted"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
        problems.append((path, "not a PEM private key"))
    return None


def _same_public_key(cert: x509.Certificate, key: object) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        return cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return False


def _is_server_name(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    labels = name.removesuffix(".").split(".")
    return len(name) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in labels)
