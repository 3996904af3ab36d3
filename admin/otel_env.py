"""OTEL settings seeded from the standard OTEL_EXPORTER_OTLP_* environment variables.

The variables are read into an API message and go through the same reading and validation as
a Set (`admin/otel_proto.py`, `admin/otel_config.py`); problems name the variable, or the field
as `environment: <section>.<field>`.

TLS: OTEL_EXPORTER_OTLP_{,TRACES_,METRICS_}CERTIFICATE, _CLIENT_CERTIFICATE and _CLIENT_KEY are
file paths (the OTLP exporter spec); they are read here, once, and their PEM becomes the config's
`tls` (inline PEM: what the config store carries to every replica). A problem names the variable
and never shows the file's content. _INSECURE is what the spec says it is — plaintext for a gRPC
endpoint given without a scheme (true: http://, otherwise https://) — not "skip verification".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from urllib.parse import unquote

from aigw.v1 import otel_config_pb2

from admin.otel_config import SECTIONS, InvalidConfig
from admin.otel_proto import duration, merge
from gateway.telemetry.export_settings import OtelSettings

__all__ = ["from_environment"]

# OTEL_EXPORTER_OTLP_PROTOCOL values, as the OTLP exporter spec names them.
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


# TLS file variables → the TlsConfig field their PEM goes into.
_TLS_FILES = (
    ("CERTIFICATE", "ca_pem"),
    ("CLIENT_CERTIFICATE", "client_cert_pem"),
    ("CLIENT_KEY", "client_key_pem"),
)
_MAX_PEM_FILE = 1024 * 1024


def _read_pem(path: str) -> str:
    """The PEM text in the file at `path`; ValueError with a reason that never quotes it."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_PEM_FILE + 1)
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or type(e).__name__}") from None
    if len(data) > _MAX_PEM_FILE:
        raise ValueError(f"{path}: larger than 1 MiB; not a PEM file")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a PEM file (binary, DER?)") from None


def _milliseconds(text: str) -> float:
    seconds = float(text) / 1000
    if not math.isfinite(seconds) or abs(seconds) > 1e9:
        raise ValueError(text)
    return seconds


def from_environment(env: Mapping[str, str]) -> OtelSettings:
    """Settings seeded from the standard OTEL_EXPORTER_OTLP_* variables (export on when an
    endpoint is set, unless OTEL_{TRACES,METRICS}_EXPORTER=none)."""
    config = otel_config_pb2.OtelConfig()
    problems: list[tuple[str, str]] = []
    for section in SECTIONS:
        sig = section.upper()

        def var(name: str, sig: str = sig) -> str | None:
            return env.get(f"OTEL_EXPORTER_OTLP_{sig}_{name}") or env.get(
                f"OTEL_EXPORTER_OTLP_{name}"
            )

        def var_name(name: str, sig: str = sig) -> str:
            """The variable `var(name)` read: the signal's own if set, else the generic one."""
            own = f"OTEL_EXPORTER_OTLP_{sig}_{name}"
            return own if env.get(own) else f"OTEL_EXPORTER_OTLP_{name}"

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
        if protocol_name == "grpc" and "://" not in endpoint:
            # The spec's one use of OTEL_EXPORTER_OTLP_INSECURE: a scheme-less gRPC endpoint.
            insecure = (var("INSECURE") or "").strip().lower() == "true"
            endpoint = ("http://" if insecure else "https://") + endpoint
        pb = getattr(config, section)
        pb.enabled = env.get(f"OTEL_{sig}_EXPORTER", "otlp").strip().lower() != "none"
        pb.protocol, pb.encoding, pb.endpoint = protocol, encoding, endpoint
        for suffix, field in _TLS_FILES:
            if path := var(suffix):
                try:
                    setattr(pb.tls, field, _read_pem(path.strip()))
                except ValueError as e:
                    problems.append((var_name(suffix), str(e)))
        try:
            pb.headers.update(_env_headers(var("HEADERS") or ""))
        except InvalidConfig as e:
            problems.extend((f"OTEL_EXPORTER_OTLP_{sig}_HEADERS", m) for _, m in e.problems)
        if timeout_ms := var("TIMEOUT"):
            try:
                pb.timeout.CopyFrom(duration(_milliseconds(timeout_ms)))
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
                    pb.export_interval.CopyFrom(duration(_milliseconds(interval_ms)))
                except ValueError:
                    problems.append(("OTEL_METRIC_EXPORT_INTERVAL", "milliseconds expected"))
    if problems:
        raise InvalidConfig(problems)
    try:
        return merge(config, OtelSettings())
    except InvalidConfig as e:
        raise InvalidConfig([(f"environment: {path}", m) for path, m in e.problems]) from None
