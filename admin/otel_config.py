"""The OTEL config model at the API edge: messages ↔ settings, validation, environment seeding.

Validation collects every problem with its dotted field path (`traces.encoding: ENCODING_JSON
needs PROTOCOL_HTTP`) before anything is applied, so a rejected Set changes nothing and the
operator fixes everything in one round. Header values are secrets: errors name the header,
never its value, and Get answers every value as `MASK`; sending `MASK` back keeps the stored
value, so a Get → edit → Set round trip never needs the secret.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import replace
from urllib.parse import unquote, urlsplit

from aigw.v1 import otel_config_pb2
from google.protobuf import duration_pb2

from gateway.telemetry.export_settings import (
    DEFAULT_EXPORT_INTERVAL,
    DEFAULT_TIMEOUT,
    ExporterSettings,
    OtelSettings,
)

__all__ = [
    "MASK",
    "InvalidConfig",
    "check_settings",
    "duration",
    "from_environment",
    "merge",
    "section_from_proto",
    "to_proto",
]

MASK = "********"
MAX_HEADERS = 32
MAX_HEADER_VALUE = 8192
MAX_ENDPOINT = 2048
TIMEOUT_RANGE = (0.1, 60.0)
INTERVAL_RANGE = (1.0, 3600.0)

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

_PROTOCOL = {
    otel_config_pb2.PROTOCOL_UNSPECIFIED: "http",
    otel_config_pb2.PROTOCOL_HTTP: "http",
    otel_config_pb2.PROTOCOL_GRPC: "grpc",
}
_ENCODING = {
    otel_config_pb2.ENCODING_UNSPECIFIED: "proto",
    otel_config_pb2.ENCODING_PROTO: "proto",
    otel_config_pb2.ENCODING_JSON: "json",
}
_COMPRESSION = {
    otel_config_pb2.COMPRESSION_UNSPECIFIED: "none",
    otel_config_pb2.COMPRESSION_NONE: "none",
    otel_config_pb2.COMPRESSION_GZIP: "gzip",
}
_TEMPORALITY = {
    otel_config_pb2.TEMPORALITY_UNSPECIFIED: "cumulative",
    otel_config_pb2.TEMPORALITY_CUMULATIVE: "cumulative",
    otel_config_pb2.TEMPORALITY_DELTA: "delta",
}


class InvalidConfig(Exception):
    """Every problem found, each as (field path, problem)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {problem}" for path, problem in problems))


# --- messages → settings ------------------------------------------------------------------------


def _enum(
    value: int, table: Mapping[int, str], path: str, enum: object, problems: list[tuple[str, str]]
) -> str | None:
    if value in table:
        return table[value]
    names = [n for n in enum.keys() if not n.endswith("UNSPECIFIED")]  # type: ignore[attr-defined]  # noqa: SIM118 - EnumTypeWrapper is not iterable
    problems.append((path, f"unknown value {value}; expected one of {', '.join(names)}"))
    return None


def _seconds(
    d: duration_pb2.Duration, path: str, bounds: tuple[float, float], problems: list
) -> float | None:
    valid_nanos = -999_999_999 <= d.nanos <= 999_999_999
    same_sign = d.seconds == 0 or d.nanos == 0 or (d.seconds > 0) == (d.nanos > 0)
    if not (valid_nanos and same_sign):
        problems.append((path, "not a valid duration"))
        return None
    seconds = d.seconds + d.nanos / 1e9
    lo, hi = bounds
    if not lo <= seconds <= hi:
        problems.append(
            (path, f"must be between {_human(lo)} and {_human(hi)}, got {_human(seconds)}")
        )
        return None
    return seconds


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
    headers: Mapping[str, str],
    stored: Mapping[str, str],
    protocol: str,
    path: str,
    problems: list[tuple[str, str]],
) -> tuple[tuple[str, str], ...]:
    if len(headers) > MAX_HEADERS:
        problems.append((path, f"at most {MAX_HEADERS} headers"))
        return ()
    out: dict[str, str] = {}
    reserved = _RESERVED_GRPC if protocol == "grpc" else _RESERVED_HTTP
    for raw_name, value in sorted(headers.items()):
        name = raw_name.lower()
        where = f"{path}[{raw_name[:64]!r}]"
        if not _TOKEN.fullmatch(raw_name):
            problems.append(
                (where, "not a valid header name (letters, digits and !#$%&'*+-.^_`|~)")
            )
            continue
        if name in out:
            problems.append((where, "given twice (names are case-insensitive)"))
            continue
        if name in reserved or (protocol == "grpc" and name.startswith("grpc-")):
            problems.append((where, "set by the exporter itself; cannot be overridden"))
            continue
        if protocol == "grpc" and name.endswith("-bin"):
            problems.append((where, "binary (-bin) metadata is not supported"))
            continue
        if value == MASK:
            if name not in stored:
                problems.append(
                    (
                        where,
                        "masked value sent, but no value is stored for it at this endpoint's "
                        "origin; send the value itself",
                    )
                )
                continue
            value = stored[name]
        elif len(value) > MAX_HEADER_VALUE:
            problems.append((where, f"value longer than {MAX_HEADER_VALUE} characters"))
            continue
        elif not _HEADER_VALUE.fullmatch(value):
            # Never echo the value: it is usually a credential.
            problems.append(
                (
                    where,
                    "value must be printable ASCII (no CR, LF, NUL or other control characters)",
                )
            )
            continue
        out[name] = value
    return tuple(out.items())


def _origin(url: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(url)
        return parts.scheme, (parts.hostname or ""), parts.port
    except ValueError:
        return None


def section_from_proto(
    pb: otel_config_pb2.ExporterConfig,
    section: str,
    stored: ExporterSettings,
    problems: list[tuple[str, str]],
) -> ExporterSettings:
    """The settings `pb` describes, defaults filled in; problems are appended, not raised."""
    p = section + "."
    protocol = _enum(pb.protocol, _PROTOCOL, p + "protocol", otel_config_pb2.Protocol, problems)
    encoding = _enum(pb.encoding, _ENCODING, p + "encoding", otel_config_pb2.Encoding, problems)
    compression = _enum(
        pb.compression, _COMPRESSION, p + "compression", otel_config_pb2.Compression, problems
    )
    if protocol == "grpc" and encoding == "json":
        problems.append((p + "encoding", "ENCODING_JSON needs PROTOCOL_HTTP"))
    if pb.endpoint:
        _endpoint(pb.endpoint, protocol or "http", p + "endpoint", problems)
    elif pb.enabled:
        problems.append((p + "endpoint", "required when enabled"))
    # A masked value keeps the stored secret only for the same origin: otherwise anyone with
    # admin access could point the endpoint at their own server and receive the secret.
    kept = stored.header_dict if _origin(pb.endpoint) == _origin(stored.endpoint) else {}
    headers = _headers(pb.headers, kept, protocol or "http", p + "headers", problems)
    timeout = DEFAULT_TIMEOUT
    if pb.HasField("timeout"):
        timeout = _seconds(pb.timeout, p + "timeout", TIMEOUT_RANGE, problems) or DEFAULT_TIMEOUT
    interval, temporality = DEFAULT_EXPORT_INTERVAL, "cumulative"
    if section == "metrics":
        if pb.HasField("export_interval"):
            interval = (
                _seconds(pb.export_interval, p + "export_interval", INTERVAL_RANGE, problems)
                or DEFAULT_EXPORT_INTERVAL
            )
        temporality = (
            _enum(
                pb.temporality,
                _TEMPORALITY,
                p + "temporality",
                otel_config_pb2.Temporality,
                problems,
            )
            or "cumulative"
        )
    else:
        if pb.HasField("export_interval"):
            problems.append((p + "export_interval", "applies to metrics only"))
        if pb.temporality:
            problems.append((p + "temporality", "applies to metrics only"))
    return ExporterSettings(
        enabled=pb.enabled,
        protocol=protocol or "http",  # type: ignore[arg-type]
        endpoint=pb.endpoint,
        encoding=encoding or "proto",  # type: ignore[arg-type]
        headers=headers,
        timeout=timeout,
        compression=compression or "none",  # type: ignore[arg-type]
        export_interval=interval,
        temporality=temporality,  # type: ignore[arg-type]
    )


def merge(config: otel_config_pb2.OtelConfig, current: OtelSettings) -> OtelSettings:
    """`current` with the sections `config` replaces; InvalidConfig lists every problem."""
    problems: list[tuple[str, str]] = []
    traces, metrics = current.traces, current.metrics
    if config.HasField("traces"):
        traces = section_from_proto(config.traces, "traces", current.traces, problems)
    if config.HasField("metrics"):
        metrics = section_from_proto(config.metrics, "metrics", current.metrics, problems)
    if problems:
        raise InvalidConfig(problems)
    return replace(current, traces=traces, metrics=metrics)


# --- settings → messages ------------------------------------------------------------------------


def duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


_LITERALS = {
    "protocol": ("http", "grpc"),
    "encoding": ("proto", "json"),
    "compression": ("none", "gzip"),
    "temporality": ("cumulative", "delta"),
}


def check_settings(settings: OtelSettings) -> list[tuple[str, str]]:
    """Every problem in settings that did not come through the API (a stored file): the same
    rules as a Set, so a hand-edited file cannot smuggle in what the API would refuse."""
    problems: list[tuple[str, str]] = []
    for name in ("traces", "metrics"):
        s: ExporterSettings = getattr(settings, name)
        bad = [f for f, allowed in _LITERALS.items() if getattr(s, f) not in allowed]
        problems += [(f"{name}.{f}", "not a known value") for f in bad]
        numbers = ("timeout", "export_interval")
        if any(not isinstance(getattr(s, f), int | float) for f in numbers):
            problems.append((name, "timeout and export_interval must be numbers"))
            continue
        if bad:
            continue
        pb = _section_to_proto(s, metrics=name == "metrics", masked=False)
        section_from_proto(pb, name, ExporterSettings(), problems)
    return problems


def _section_to_proto(
    s: ExporterSettings, metrics: bool, *, masked: bool = True
) -> otel_config_pb2.ExporterConfig:
    pb = otel_config_pb2.ExporterConfig(
        enabled=s.enabled,
        protocol=otel_config_pb2.PROTOCOL_GRPC
        if s.protocol == "grpc"
        else otel_config_pb2.PROTOCOL_HTTP,
        endpoint=s.endpoint,
        encoding=otel_config_pb2.ENCODING_JSON
        if s.encoding == "json"
        else otel_config_pb2.ENCODING_PROTO,
        headers={name: MASK if masked else value for name, value in s.headers},
        timeout=duration(s.timeout),
        compression=otel_config_pb2.COMPRESSION_GZIP
        if s.compression == "gzip"
        else otel_config_pb2.COMPRESSION_NONE,
    )
    if metrics:
        pb.export_interval.CopyFrom(duration(s.export_interval))
        pb.temporality = (
            otel_config_pb2.TEMPORALITY_DELTA
            if s.temporality == "delta"
            else otel_config_pb2.TEMPORALITY_CUMULATIVE
        )
    return pb


def to_proto(settings: OtelSettings) -> otel_config_pb2.OtelConfig:
    """The config as the API shows it: both sections, every header value masked."""
    return otel_config_pb2.OtelConfig(
        traces=_section_to_proto(settings.traces, metrics=False),
        metrics=_section_to_proto(settings.metrics, metrics=True),
    )


# --- environment --------------------------------------------------------------------------------

_ENV_PROTOCOL = {
    "grpc": (otel_config_pb2.PROTOCOL_GRPC, otel_config_pb2.ENCODING_PROTO),
    "http/protobuf": (otel_config_pb2.PROTOCOL_HTTP, otel_config_pb2.ENCODING_PROTO),
    "http/json": (otel_config_pb2.PROTOCOL_HTTP, otel_config_pb2.ENCODING_JSON),
}


def _env_headers(text: str) -> dict[str, str]:
    """`k1=v1,k2=v2` with percent-encoded values, as the OTLP exporter spec defines."""
    headers: dict[str, str] = {}
    for position, pair in enumerate(text.split(","), start=1):
        if not pair.strip():
            continue
        name, sep, value = pair.partition("=")
        if not sep:
            # Never echo the entry: it is usually "authorization:<the key>".
            raise InvalidConfig([("headers", f"entry {position} is not NAME=VALUE")])
        headers[name.strip()] = unquote(value.strip())
    return headers


def from_environment(env: Mapping[str, str]) -> OtelSettings:
    """Settings seeded from the standard OTEL_EXPORTER_OTLP_* variables (export on when an
    endpoint is set, unless OTEL_{TRACES,METRICS}_EXPORTER=none)."""
    config = otel_config_pb2.OtelConfig()
    problems: list[tuple[str, str]] = []
    for section in ("traces", "metrics"):
        sig = section.upper()

        def var(name: str, sig: str = sig) -> str | None:
            return env.get(f"OTEL_EXPORTER_OTLP_{sig}_{name}") or env.get(
                f"OTEL_EXPORTER_OTLP_{name}"
            )

        protocol_name = (var("PROTOCOL") or "http/protobuf").strip().lower()
        if protocol_name not in _ENV_PROTOCOL:
            problems.append(
                (
                    f"OTEL_EXPORTER_OTLP_{sig}_PROTOCOL",
                    f"unknown protocol {protocol_name[:32]!r}; "
                    "expected grpc, http/protobuf or http/json",
                )
            )
            continue
        protocol, encoding = _ENV_PROTOCOL[protocol_name]
        endpoint = env.get(f"OTEL_EXPORTER_OTLP_{sig}_ENDPOINT")
        if endpoint is None and (base := env.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
            endpoint = base if protocol_name == "grpc" else f"{base.rstrip('/')}/v1/{section}"
        if not endpoint:
            continue
        pb = getattr(config, section)
        pb.enabled = env.get(f"OTEL_{sig}_EXPORTER", "otlp").strip().lower() != "none"
        pb.protocol, pb.encoding, pb.endpoint = protocol, encoding, endpoint
        try:
            pb.headers.update(_env_headers(var("HEADERS") or ""))
        except InvalidConfig as e:
            problems.extend((f"OTEL_EXPORTER_OTLP_{sig}_HEADERS", m) for _, m in e.problems)
        if timeout_ms := var("TIMEOUT"):
            try:
                seconds = float(timeout_ms) / 1000
                if not math.isfinite(seconds) or abs(seconds) > 1e9:
                    raise ValueError(timeout_ms)
                pb.timeout.CopyFrom(duration(seconds))
            except ValueError:
                problems.append((f"OTEL_EXPORTER_OTLP_{sig}_TIMEOUT", "milliseconds expected"))
        if (var("COMPRESSION") or "").strip().lower() == "gzip":
            pb.compression = otel_config_pb2.COMPRESSION_GZIP
        if section == "metrics":
            preference = env.get("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "").lower()
            if preference in ("delta", "lowmemory"):
                pb.temporality = otel_config_pb2.TEMPORALITY_DELTA
            if interval_ms := env.get("OTEL_METRIC_EXPORT_INTERVAL"):
                try:
                    seconds = float(interval_ms) / 1000
                    if not math.isfinite(seconds) or abs(seconds) > 1e9:
                        raise ValueError(interval_ms)
                    pb.export_interval.CopyFrom(duration(seconds))
                except ValueError:
                    problems.append(("OTEL_METRIC_EXPORT_INTERVAL", "milliseconds expected"))
    if problems:
        raise InvalidConfig(problems)
    try:
        return merge(config, OtelSettings())
    except InvalidConfig as e:
        raise InvalidConfig([(f"environment: {path}", m) for path, m in e.problems]) from None
