"""OTEL config messages ↔ settings: the API's view of the model in `admin/otel_config.py`.

Reading a message reports only what cannot be read into settings (an enum number this build
does not know, a malformed Duration, a field the section does not have); everything else is the
model's validation. Get answers every secret as `MASK` — header values, the endpoint's query
values (`?api_key=********`) and the TLS client key; a `MASK` sent back keeps the value stored
for the same origin, so a Get → edit → Set round trip never needs the secret. `warnings` (output
only) says what makes a section unsafe as configured; it is ignored when read.
"""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import unquote, urlsplit

from aigw.v1 import otel_config_pb2
from google.protobuf import duration_pb2

from admin.otel_config import MASK, InvalidConfig, validate_section
from admin.otel_vocabulary import TLS_VOCABULARY, VOCABULARY
from gateway.telemetry.export_settings import (
    DEFAULT_EXPORT_INTERVAL,
    DEFAULT_TIMEOUT,
    ExporterSettings,
    OtelSettings,
    TlsSettings,
    mask_query,
)

__all__ = [
    "INSECURE_WARNING",
    "duration",
    "merge",
    "section_from_proto",
    "section_warnings",
    "to_proto",
]

INSECURE_WARNING = (
    "tls.insecure_skip_verify: the backend's certificate is NOT verified; anyone on the path "
    "can read and change the export, credentials included"
)

# Problems are reported in this field order, whichever step found them.
_REPORT_ORDER = (
    "protocol",
    "encoding",
    "compression",
    "endpoint",
    "headers",
    "tls",
    "timeout",
    "export_interval",
    "temporality",
)


# --- messages → settings ------------------------------------------------------------------------


def _enum(value: int, field: str, p: str, problems: list[tuple[str, str]]) -> str:
    vocabulary = VOCABULARY[field]
    if value in vocabulary.from_proto:
        return vocabulary.from_proto[value]
    expected = ", ".join(vocabulary.names)
    problems.append((p + field, f"unknown value {value}; expected one of {expected}"))
    return vocabulary.default


def _seconds(
    pb: otel_config_pb2.ExporterConfig,
    field: str,
    p: str,
    problems: list[tuple[str, str]],
    default: float,
) -> float:
    """The Duration field in seconds; `default` when absent or malformed (then a problem)."""
    if not pb.HasField(field):
        return default
    d: duration_pb2.Duration = getattr(pb, field)
    valid_nanos = -999_999_999 <= d.nanos <= 999_999_999
    same_sign = d.seconds == 0 or d.nanos == 0 or (d.seconds > 0) == (d.nanos > 0)
    if not (valid_nanos and same_sign):
        problems.append((p + field, "not a valid duration"))
        return default
    return d.seconds + d.nanos / 1e9


def _origin(url: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(url)
        return parts.scheme, (parts.hostname or ""), parts.port
    except ValueError:
        return None


def _rank(problem: tuple[str, str]) -> int:
    field = problem[0].partition(".")[2].partition("[")[0].partition(".")[0]
    return _REPORT_ORDER.index(field) if field in _REPORT_ORDER else 0


def section_from_proto(
    pb: otel_config_pb2.ExporterConfig,
    section: str,
    stored: ExporterSettings,
    problems: list[tuple[str, str]],
) -> ExporterSettings:
    """The settings `pb` describes, defaults filled in; problems are appended, not raised."""
    p = section + "."
    unreadable: list[tuple[str, str]] = []  # enums: reported first, before anything else
    unfit: list[tuple[str, str]] = []  # durations and metrics-only fields: in field order
    protocol = _enum(pb.protocol, "protocol", p, unreadable)
    encoding = _enum(pb.encoding, "encoding", p, unreadable)
    compression = _enum(pb.compression, "compression", p, unreadable)
    # A masked value keeps the stored secret only for the same origin: otherwise anyone with
    # admin access could point the endpoint at their own server and receive the secret.
    same_origin = _origin(pb.endpoint) == _origin(stored.endpoint)
    kept = stored.header_dict if same_origin else {}
    headers = tuple(
        (name, kept.get(name.lower(), value) if value == MASK else value)
        for name, value in sorted(pb.headers.items())
    )
    endpoint = _unmask_query(pb.endpoint, stored.endpoint) if same_origin else pb.endpoint
    tls = _tls_from_proto(pb, p, stored.tls if same_origin else TlsSettings(), unreadable)
    timeout = _seconds(pb, "timeout", p, unfit, DEFAULT_TIMEOUT)
    interval, temporality = DEFAULT_EXPORT_INTERVAL, VOCABULARY["temporality"].default
    if section == "metrics":
        interval = _seconds(pb, "export_interval", p, unfit, DEFAULT_EXPORT_INTERVAL)
        temporality = _enum(pb.temporality, "temporality", p, unfit)
    else:
        # The message has them for both sections; the settings' traces values are ignored.
        if pb.HasField("export_interval"):
            unfit.append((p + "export_interval", "applies to metrics only"))
        if pb.temporality:
            unfit.append((p + "temporality", "applies to metrics only"))
    settings = ExporterSettings(
        enabled=pb.enabled,
        protocol=protocol,  # type: ignore[arg-type]
        endpoint=endpoint,
        encoding=encoding,  # type: ignore[arg-type]
        headers=headers,
        timeout=timeout,
        compression=compression,  # type: ignore[arg-type]
        export_interval=interval,
        temporality=temporality,  # type: ignore[arg-type]
        tls=tls,
    )
    problems += unreadable + sorted(validate_section(settings, section) + unfit, key=_rank)
    # Valid names are unique case-insensitively; the exporters take them lowercase.
    return replace(settings, headers=tuple((name.lower(), value) for name, value in headers))


def _query_pairs(endpoint: str) -> list[tuple[str, str]]:
    query = endpoint.partition("#")[0].partition("?")[2]
    return [(n, v) for n, _, v in (pair.partition("=") for pair in query.split("&") if pair)]


def _unmask_query(endpoint: str, stored: str) -> str:
    """`endpoint` with each masked query value replaced by the stored value of the parameter of
    that name (the n-th of that name for the n-th); a mask with nothing behind it stays, and the
    model reports it."""
    if MASK not in unquote(endpoint.partition("#")[0].partition("?")[2]):
        return endpoint
    kept: dict[str, list[str]] = {}
    for name, value in _query_pairs(stored):
        kept.setdefault(name, []).append(value)
    seen: dict[str, int] = {}
    pairs = []
    for pair in endpoint.partition("#")[0].partition("?")[2].split("&"):
        name, sep, value = pair.partition("=")
        index = seen[name] = seen.get(name, -1) + 1
        values = kept.get(name, [])
        if sep and unquote(value) == MASK and index < len(values) and values[index]:
            value = values[index]
        pairs.append(f"{name}{sep}{value}")
    rest, hash_, fragment = endpoint.partition("#")
    return f"{rest.partition('?')[0]}?{'&'.join(pairs)}{hash_}{fragment}"


def _tls_from_proto(
    pb: otel_config_pb2.ExporterConfig,
    p: str,
    stored: TlsSettings,
    problems: list[tuple[str, str]],
) -> TlsSettings:
    """The TLS settings of `pb` (defaults when absent); a masked key keeps `stored`'s key."""
    if not pb.HasField("tls"):
        return TlsSettings()
    t = pb.tls
    if t.min_version in TLS_VOCABULARY.from_proto:
        min_version = TLS_VOCABULARY.from_proto[t.min_version]
    else:
        expected = ", ".join(TLS_VOCABULARY.names)
        problems.append(
            (p + "tls.min_version", f"unknown value {t.min_version}; expected one of {expected}")
        )
        min_version = TLS_VOCABULARY.default
    key = t.client_key_pem
    if key == MASK and stored.client_key_pem:
        key = stored.client_key_pem
    return TlsSettings(
        ca_pem=t.ca_pem,
        client_cert_pem=t.client_cert_pem,
        client_key_pem=key,
        server_name=t.server_name,
        min_version=min_version,  # type: ignore[arg-type]
        insecure_skip_verify=t.insecure_skip_verify,
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


def section_warnings(s: ExporterSettings) -> list[str]:
    """What makes `s` unsafe as configured, for Get to show loudly."""
    return [INSECURE_WARNING] if s.tls.insecure_skip_verify else []


def _tls_to_proto(tls: TlsSettings) -> otel_config_pb2.TlsConfig:
    return otel_config_pb2.TlsConfig(
        ca_pem=tls.ca_pem,
        client_cert_pem=tls.client_cert_pem,
        client_key_pem=MASK if tls.client_key_pem else "",
        server_name=tls.server_name,
        min_version=TLS_VOCABULARY.number(tls.min_version),
        insecure_skip_verify=tls.insecure_skip_verify,
    )


def _section_to_proto(s: ExporterSettings, metrics: bool) -> otel_config_pb2.ExporterConfig:
    pb = otel_config_pb2.ExporterConfig(
        enabled=s.enabled,
        protocol=VOCABULARY["protocol"].number(s.protocol),
        endpoint=mask_query(s.endpoint, MASK),
        encoding=VOCABULARY["encoding"].number(s.encoding),
        headers={name: MASK for name, _ in s.headers},
        timeout=duration(s.timeout),
        compression=VOCABULARY["compression"].number(s.compression),
        warnings=section_warnings(s),
    )
    if s.tls.configured:
        pb.tls.CopyFrom(_tls_to_proto(s.tls))
    if metrics:
        pb.export_interval.CopyFrom(duration(s.export_interval))
        pb.temporality = VOCABULARY["temporality"].number(s.temporality)
    return pb


def to_proto(settings: OtelSettings) -> otel_config_pb2.OtelConfig:
    """The config as the API shows it: both sections, every secret masked."""
    return otel_config_pb2.OtelConfig(
        traces=_section_to_proto(settings.traces, metrics=False),
        metrics=_section_to_proto(settings.metrics, metrics=True),
    )
