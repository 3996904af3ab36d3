"""The OTEL config vocabulary, in one place: each enumerated setting's values and proto enums.

The values are the `Literal` types of `gateway/telemetry/export_settings.py`; each maps to the
proto enum value named `<ENUM>_<VALUE>` (`"grpc"` ↔ `PROTOCOL_GRPC`), and `<ENUM>_UNSPECIFIED`
means the setting's default. A new value is added to its `Literal` type and to the proto enum;
both tables below follow (a `Literal` value without its proto enum value fails at import).
The TLS settings' one enumerated setting, `tls.min_version`, is `TLS_VOCABULARY`: its values
have dots ("1.2"), its enum values underscores (`TLS_VERSION_1_2`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, get_args

from aigw.v1 import otel_config_pb2

from gateway.telemetry.export_settings import (
    Compression,
    Encoding,
    ExporterSettings,
    Protocol,
    Temporality,
    TlsSettings,
    TlsVersion,
)

__all__ = ["LITERALS", "TLS_VOCABULARY", "VOCABULARY", "Vocabulary"]


@dataclass(frozen=True)
class Vocabulary:
    """One enumerated setting: its values and how they map to and from its proto enum."""

    enum: Any  # the proto EnumTypeWrapper, e.g. otel_config_pb2.Protocol
    literals: tuple[str, ...]
    default: str
    to_proto: Mapping[str, int]
    from_proto: Mapping[int, str]  # <ENUM>_UNSPECIFIED included, as the default

    @property
    def names(self) -> list[str]:
        """The proto enum names a message may use (UNSPECIFIED aside), in proto order."""
        return [n for n in self.enum.keys() if not n.endswith("UNSPECIFIED")]  # noqa: SIM118 - EnumTypeWrapper is not iterable

    def number(self, literal: str) -> int:
        """The proto enum value of `literal`; the default's for one outside the vocabulary."""
        return self.to_proto.get(literal, self.to_proto[self.default])


def _vocabulary(
    field: str, literal_type: Any, enum: Any, *, prefix: str = "", defaults: object = None
) -> Vocabulary:
    prefix = prefix or enum.DESCRIPTOR.name.upper()
    literals: tuple[str, ...] = get_args(literal_type)
    to_proto = {
        literal: enum.Value(f"{prefix}_{literal.upper().replace('.', '_')}") for literal in literals
    }
    default = getattr(defaults or ExporterSettings(), field)
    from_proto = {enum.Value(f"{prefix}_UNSPECIFIED"): default}
    from_proto.update({number: literal for literal, number in to_proto.items()})
    return Vocabulary(enum, literals, default, to_proto, from_proto)


# Field name → vocabulary, in the order problems with them are reported.
VOCABULARY: Mapping[str, Vocabulary] = {
    "protocol": _vocabulary("protocol", Protocol, otel_config_pb2.Protocol),
    "encoding": _vocabulary("encoding", Encoding, otel_config_pb2.Encoding),
    "compression": _vocabulary("compression", Compression, otel_config_pb2.Compression),
    "temporality": _vocabulary("temporality", Temporality, otel_config_pb2.Temporality),
}

LITERALS: Mapping[str, tuple[str, ...]] = {f: v.literals for f, v in VOCABULARY.items()}

TLS_VOCABULARY: Vocabulary = _vocabulary(
    "min_version",
    TlsVersion,
    otel_config_pb2.TlsVersion,
    prefix="TLS_VERSION",
    defaults=TlsSettings(),
)
