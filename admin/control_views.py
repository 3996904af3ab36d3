"""What the AdminService API and the operator console both show: one mapping, two front ends.

- `change_failure`: a failed Set or rollback as (status code, message); nothing was changed.
- `health_document` / `health_from_document`: exporter health as a replica publishes it in
  its heartbeat, and back.
- `fleet_view`: the replicas, the newest stored config version and whether the fleet runs it.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, fields
from typing import Any

import grpc

from admin.config_manager import OtelConfigManager, StaleVersion, UnknownVersion
from admin.config_store import ConfigStoreError, ConfigStoreUnavailable
from admin.otel_config import InvalidConfig
from admin.replicas import Replicas, ReplicaStatus
from admin.secret_box import SecretBoxError
from gateway.telemetry.control import ExportHealth
from gateway.telemetry.export_stats import HealthSnapshot

__all__ = [
    "CHANGE_ERRORS",
    "READ_YOUR_WRITES_SECONDS",
    "FleetUnavailable",
    "FleetView",
    "change_failure",
    "fleet_view",
    "health_document",
    "health_from_document",
]

# How long a trace query waits for spans already ended to reach the store (read your own
# writes: a listing right after a call shows it). Bounded: a store that is down must not hold
# the query for longer.
READ_YOUR_WRITES_SECONDS = 1.0

CHANGE_ERRORS = (
    InvalidConfig,
    StaleVersion,
    UnknownVersion,
    SecretBoxError,
    ConfigStoreError,
    OSError,
    ValueError,
)


def change_failure(e: Exception) -> tuple[grpc.StatusCode, str]:
    """The one mapping of a failed Set or rollback (one of CHANGE_ERRORS) to a status."""
    if isinstance(e, InvalidConfig):
        return grpc.StatusCode.INVALID_ARGUMENT, str(e)
    if isinstance(e, StaleVersion | SecretBoxError):
        # A missing encryption key is fixed by the operator, not by retrying.
        return grpc.StatusCode.FAILED_PRECONDITION, str(e)
    if isinstance(e, UnknownVersion):
        return grpc.StatusCode.NOT_FOUND, str(e)
    if isinstance(e, ConfigStoreUnavailable):
        return grpc.StatusCode.UNAVAILABLE, f"config store unavailable, nothing changed: {e}"
    if isinstance(e, ConfigStoreError | OSError):
        return grpc.StatusCode.UNAVAILABLE, f"config not saved, nothing changed: {e}"
    if isinstance(e, ValueError):
        # An exporter refused its settings while being built: nothing was switched.
        return grpc.StatusCode.INVALID_ARGUMENT, f"config: {e}"
    raise e


def health_document(health: ExportHealth) -> dict[str, Any]:
    """Exporter health as a replica publishes it in its heartbeat: HealthSnapshot's fields."""
    return {"traces": asdict(health.traces), "metrics": asdict(health.metrics)}


def health_from_document(doc: Any) -> HealthSnapshot:
    """Back from a heartbeat row (a field missing there, say from an older replica, is zero)."""
    doc = doc if isinstance(doc, dict) else {}
    values: dict[str, Any] = {}
    for f in fields(HealthSnapshot):
        kind = str if f.name == "last_error" else int
        values[f.name] = kind(doc.get(f.name, kind()))
    return HealthSnapshot(**values)


class FleetUnavailable(Exception):
    """The shared store cannot be read right now; the message names it, never a credential."""


@dataclass(frozen=True, slots=True)
class FleetView:
    replicas: list[ReplicaStatus]
    current_version: int
    converged: bool


async def fleet_view(replicas: Replicas, manager: OtelConfigManager) -> FleetView:
    try:
        listed = await asyncio.to_thread(replicas.list)
        newest = await asyncio.to_thread(manager.store.latest)
    except (ConnectionError, ConfigStoreUnavailable) as e:
        raise FleetUnavailable(f"config store unavailable: {e}") from None
    current = newest.version if newest is not None else manager.settings.version
    live = [r for r in listed if r.live]
    return FleetView(
        replicas=listed,
        current_version=current,
        converged=bool(live) and all(r.applied_version == current for r in live),
    )
