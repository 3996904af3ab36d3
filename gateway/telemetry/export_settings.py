"""What one OTLP exporter needs to know: the data plane's view of the OTEL config.

The control plane (`admin/otel_config.py`) turns API messages and environment variables into
these values and validates them; the data plane only builds exporters from them. Defaults live
here, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "DEFAULT_EXPORT_INTERVAL",
    "DEFAULT_TIMEOUT",
    "ExporterSettings",
    "OtelSettings",
]

DEFAULT_TIMEOUT = 5.0
DEFAULT_EXPORT_INTERVAL = 60.0

# The vocabulary: a new value goes here and into the proto enum (`<ENUM>_<VALUE>`);
# admin/otel_vocabulary.py derives the API's enum mapping and the accepted values from these.
Protocol = Literal["http", "grpc"]
Encoding = Literal["proto", "json"]
Compression = Literal["none", "gzip"]
Temporality = Literal["cumulative", "delta"]


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

    @property
    def header_dict(self) -> dict[str, str]:
        return dict(self.headers)

    def __repr__(self) -> str:
        # Header values are secrets: a stray log of this object must not print them.
        names = ", ".join(name for name, _ in self.headers)
        return (
            f"ExporterSettings(enabled={self.enabled}, protocol={self.protocol!r}, "
            f"endpoint={self.endpoint!r}, encoding={self.encoding!r}, headers=[{names}], "
            f"timeout={self.timeout}, compression={self.compression!r}, "
            f"export_interval={self.export_interval}, temporality={self.temporality!r})"
        )


@dataclass(frozen=True, kw_only=True)
class OtelSettings:
    traces: ExporterSettings = field(default_factory=ExporterSettings)
    metrics: ExporterSettings = field(default_factory=ExporterSettings)
    # Increases by one with every applied change; 0 for defaults or environment seeding.
    version: int = 0
