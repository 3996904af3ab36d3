"""The Settings form ↔ the API's OtelConfig message: the console speaks the API, nothing else.

The form is turned into the very `OtelConfig` message a `SetOtelConfig` or `TestOtelConfig`
call carries and handed to the config manager, so validation, masking and defaults are the
API's own (admin/otel_proto.py, admin/otel_config.py). Header values are shown as the API
shows them, `MASK`; a mask sent back keeps the stored value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aigw.v1 import otel_config_pb2

from admin.otel_config import MASK
from admin.otel_proto import duration
from admin.otel_vocabulary import VOCABULARY
from gateway.telemetry.export_settings import ExporterSettings, OtelSettings, mask_query

__all__ = ["SECTIONS", "SectionForm", "config_from_form", "field_problems", "forms_from_settings"]

SECTIONS = ("traces", "metrics")
# An enum value no vocabulary has: the API then reports "unknown value" in its own words.
_UNKNOWN_ENUM = 999


@dataclass
class SectionForm:
    """One section as the form shows it (strings, as typed)."""

    enabled: bool = False
    protocol: str = "http"
    endpoint: str = ""
    encoding: str = "proto"
    headers: list[tuple[str, str]] = field(default_factory=list)
    timeout: str = ""
    compression: str = "none"
    export_interval: str = ""
    temporality: str = "cumulative"


def _seconds(value: float) -> str:
    return f"{value:g}"


def _section_form(s: ExporterSettings) -> SectionForm:
    return SectionForm(
        enabled=s.enabled,
        protocol=s.protocol,
        # As the API shows it: query values are secrets too, masked (and kept when sent back).
        endpoint=mask_query(s.endpoint, MASK),
        encoding=s.encoding,
        headers=[(name, MASK) for name, _ in s.headers],
        timeout=_seconds(s.timeout),
        compression=s.compression,
        export_interval=_seconds(s.export_interval),
        temporality=s.temporality,
    )


def forms_from_settings(settings: OtelSettings) -> dict[str, SectionForm]:
    return {name: _section_form(getattr(settings, name)) for name in SECTIONS}


def _form_section(form: Any, section: str) -> SectionForm:
    p = section + "."
    names = form.getall(p + "header_name", [])
    values = form.getall(p + "header_value", [])
    # A row without a name is dropped (that is how a header is removed).
    headers = [
        (str(n).strip(), str(v)) for n, v in zip(names, values, strict=False) if str(n).strip()
    ]
    return SectionForm(
        enabled=form.get(p + "enabled") == "on",
        protocol=str(form.get(p + "protocol", "")),
        endpoint=str(form.get(p + "endpoint", "")).strip(),
        encoding=str(form.get(p + "encoding", "proto")),
        headers=headers,
        timeout=str(form.get(p + "timeout", "")).strip(),
        compression=str(form.get(p + "compression", "")),
        export_interval=str(form.get(p + "export_interval", "")).strip(),
        temporality=str(form.get(p + "temporality", "")),
    )


def _enum(name: str, literal: str) -> int:
    vocabulary = VOCABULARY[name]
    if literal == "":
        return 0  # UNSPECIFIED: the API's default
    return vocabulary.to_proto.get(literal, _UNKNOWN_ENUM)


def _duration(
    text: str, path: str, problems: list[tuple[str, str]]
) -> otel_config_pb2.ExporterConfig | None:
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or abs(seconds) > 1e9:
        problems.append((path, "must be a number of seconds"))
        return None
    return duration(seconds)


def _section_proto(
    s: SectionForm, section: str, problems: list[tuple[str, str]]
) -> otel_config_pb2.ExporterConfig:
    pb = otel_config_pb2.ExporterConfig(
        enabled=s.enabled,
        protocol=_enum("protocol", s.protocol),
        endpoint=s.endpoint,
        # The encoding select is disabled for gRPC: nothing is sent, the API's default holds.
        encoding=_enum("encoding", s.encoding if s.protocol != "grpc" else ""),
        compression=_enum("compression", s.compression),
    )
    for name, value in s.headers:
        if name in pb.headers:
            problems.append((f"{section}.headers[{name[:64]!r}]", "given twice"))
        pb.headers[name] = value
    timeout = _duration(s.timeout, f"{section}.timeout", problems)
    if timeout is not None:
        pb.timeout.CopyFrom(timeout)
    if section == "metrics":
        interval = _duration(s.export_interval, f"{section}.export_interval", problems)
        if interval is not None:
            pb.export_interval.CopyFrom(interval)
        pb.temporality = _enum("temporality", s.temporality)
    return pb


def config_from_form(
    form: Any, current: otel_config_pb2.OtelConfig, sections: tuple[str, ...] = SECTIONS
) -> tuple[otel_config_pb2.OtelConfig, dict[str, SectionForm], list[tuple[str, str]]]:
    """The OtelConfig message the form describes, the form as typed, and the problems found
    before the API could see it (a timeout that is not a number).

    `current` is the config as the API shows it (secrets masked). The form has no TLS fields
    (TLS is set with the API or `aigw-admin`), and a section sent replaces the stored one
    whole, so the section's TLS settings are sent back as the API showed them: the masked key
    keeps the stored one, for the same endpoint origin."""
    problems: list[tuple[str, str]] = []
    forms = {name: _form_section(form, name) for name in SECTIONS}
    config = otel_config_pb2.OtelConfig()
    for name in sections:
        pb = _section_proto(forms[name], name, problems)
        shown = getattr(current, name)
        if shown.HasField("tls"):
            pb.tls.CopyFrom(shown.tls)
        getattr(config, name).CopyFrom(pb)
    return config, forms, problems


def field_problems(problems: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Problems by form field ("traces.endpoint", "traces.headers", "traces", "config")."""
    by_field: dict[str, list[str]] = {}
    for path, problem in problems:
        section, _, rest = path.partition(".")
        name = rest.partition("[")[0]
        key = f"{section}.{name}" if section in SECTIONS and name else section
        detail = f"{rest[len(name) :]}: {problem}" if rest[len(name) :] else problem
        by_field.setdefault(key, []).append(detail.lstrip())
    return by_field


def problems_of(mapping: Mapping[str, list[str]], key: str) -> list[str]:
    return list(mapping.get(key, ()))
