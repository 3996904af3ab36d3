"""The OTEL config model: every rule an `OtelSettings` must satisfy, checked in one place.

`validate` collects every problem with its dotted field path (`traces.encoding: ENCODING_JSON
needs PROTOCOL_HTTP`), the way the OpenTelemetry Collector's confmap joins errors, so a rejected
Set changes nothing and the operator fixes everything in one round. The same rules hold for
settings from the API (`admin/otel_proto.py`), the environment (`admin/otel_env.py`) and a
stored file, so a hand-edited file cannot smuggle in what the API would refuse.

Header values are secrets: problems name the header, never its value. The API shows every value
as `MASK` and takes `MASK` back to mean "keep the stored value" (`admin/otel_proto.py`); a `MASK`
still standing where a value belongs is a problem here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from admin.otel_vocabulary import LITERALS
from gateway.telemetry.export_settings import ExporterSettings, OtelSettings

__all__ = [
    "INTERVAL_RANGE",
    "MASK",
    "MAX_ENDPOINT",
    "MAX_HEADERS",
    "MAX_HEADER_VALUE",
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
