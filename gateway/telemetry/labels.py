"""Metric labels from request metadata: only allow-listed keys, each capped in distinct values.

Unbounded label cardinality is the failure users report most about gateway metrics: one client
putting a request id in a tag can make every histogram grow without end. A key is a label only
when the operator lists it; its first `max_values` distinct values are kept, later ones are
reported as "other", so a series count has a hard ceiling of keys × (max_values + 1).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from gateway.telemetry.catalog import Attr

__all__ = ["OVERFLOW_VALUE", "MetadataLabels"]

OVERFLOW_VALUE = "other"
_MAX_VALUE_CHARS = 64


class MetadataLabels:
    def __init__(self, allowed: tuple[str, ...], max_values: int) -> None:
        self._allowed = allowed
        self._max_values = max_values
        self._seen: dict[str, set[str]] = {key: set() for key in allowed}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._allowed)

    def labels(self, metadata: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        """(attribute, value) pairs for the allow-listed keys present in `metadata`."""
        out: list[tuple[str, str]] = []
        for key in self._allowed:
            value = metadata.get(key)
            if value is None:
                continue
            value = value[:_MAX_VALUE_CHARS]
            seen = self._seen[key]
            if value not in seen:
                with self._lock:
                    if len(seen) < self._max_values:
                        seen.add(value)
                    else:
                        value = OVERFLOW_VALUE
            out.append((Attr.METADATA_PREFIX + key, value))
        return tuple(out)
