"""Who is in the fleet: every replica registers itself and heartbeats into the shared store.

Each replica upserts one row of `aigw_replicas` (created by the config store's migration) every
`heartbeat_seconds`: its instance id (the `service.instance.id` on its telemetry), the host:port
it serves gRPC on, host name, pid, start time, the config version it has *applied* and its
exporters' health. Times are the database's (`now()`), so replicas with skewed clocks still
agree on who is late. A replica whose heartbeat is older than `GONE_AFTER_BEATS` beats is gone
(a clean shutdown marks itself gone at once); one gone for `forget_seconds` is deleted by
whichever replica heartbeats next. `ListReplicas` reads the table; a converged fleet is one
where every live replica's applied version is the newest stored.

`LocalReplicas` is the same view for a gateway without a shared store: itself, always live.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg

from gateway.postgres import connect, describe

__all__ = [
    "GONE_AFTER_BEATS",
    "Identity",
    "LocalReplicas",
    "PostgresReplicas",
    "ReplicaStatus",
    "Replicas",
]

_log = logging.getLogger(__name__)

GONE_AFTER_BEATS = 4
# How often the heartbeat thread looks whether the applied config version changed.
_VERSION_CHECK_SECONDS = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    instance_id: str
    # host:port this replica serves gRPC on (filled once the port is bound).
    address: str = ""
    hostname: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    started_ns: int = field(default_factory=time.time_ns)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaStatus:
    identity: Identity
    heartbeat_ns: int
    applied_version: int
    live: bool
    # {"traces": {...}, "metrics": {...}}: exporter health as of the last heartbeat.
    health: dict[str, Any]
    is_self: bool


@dataclass(frozen=True, slots=True)
class StatusSource:
    """What a replica reports of itself. Two callables, not one: the heartbeat thread asks
    for the applied version every few milliseconds (to beat at once after a change) and must
    not build the health document each time."""

    applied_version: Callable[[], int]
    # {"traces": {...}, "metrics": {...}}
    health: Callable[[], dict[str, Any]]


class Replicas(Protocol):
    def start(self, identity: Identity) -> None: ...

    def list(self) -> list[ReplicaStatus]:
        """Live first, then gone; raises `ConnectionError` when the store is unreachable."""
        ...

    def shutdown(self, deadline: float) -> None: ...


class LocalReplicas:
    def __init__(self, status: StatusSource) -> None:
        self._status = status
        self._identity = Identity(instance_id="")

    def start(self, identity: Identity) -> None:
        self._identity = identity

    def list(self) -> list[ReplicaStatus]:
        return [
            ReplicaStatus(
                identity=self._identity,
                heartbeat_ns=time.time_ns(),
                applied_version=self._status.applied_version(),
                live=True,
                health=self._status.health(),
                is_self=True,
            )
        ]

    def shutdown(self, deadline: float) -> None:
        """Nothing registered, nothing to withdraw."""


_UPSERT = """
INSERT INTO aigw_replicas (instance_id, address, hostname, pid, started_at, heartbeat_at,
                           applied_version, health)
VALUES (%(id)s, %(address)s, %(hostname)s, %(pid)s, to_timestamp(%(started)s), now(),
        %(version)s, %(health)s)
ON CONFLICT (instance_id) DO UPDATE SET
    address = excluded.address, heartbeat_at = now(), stopped_at = NULL,
    applied_version = excluded.applied_version, health = excluded.health
"""

_LIST = """
SELECT instance_id, address, hostname, pid, started_at, heartbeat_at, applied_version, health,
       stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => %(gone)s) AS live
FROM aigw_replicas
ORDER BY live DESC, address, instance_id
"""


class PostgresReplicas:
    def __init__(
        self,
        url: str,
        status: StatusSource,
        *,
        heartbeat_seconds: float,
        forget_seconds: float,
    ) -> None:
        self._url = url
        self._status = status
        self._beat = heartbeat_seconds
        self._forget = forget_seconds
        self._identity = Identity(instance_id="")
        self._beat_version = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read_lock = threading.Lock()
        self._reader: psycopg.Connection | None = None

    def start(self, identity: Identity) -> None:
        if self._thread is not None:
            return
        self._identity = identity
        self._thread = threading.Thread(target=self._run, name="aigw-heartbeat", daemon=True)
        self._thread.start()

    def _params(self) -> dict[str, Any]:
        version = self._beat_version = self._status.applied_version()
        i = self._identity
        return {
            "id": i.instance_id,
            "address": i.address,
            "hostname": i.hostname,
            "pid": i.pid,
            "started": i.started_ns / 1e9,
            "version": version,
            "health": json.dumps(self._status.health()),
        }

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = connect(self._url, application_name="aigw-heartbeat")
                conn.execute(_UPSERT, self._params())
                conn.execute(
                    "DELETE FROM aigw_replicas WHERE heartbeat_at < now() - "
                    "make_interval(secs => %s)",
                    (self._forget,),
                )
            except psycopg.Error as e:
                # The config store reports reachability; one line here per outage is enough.
                _log.debug("heartbeat failed: %s", describe(e, self._url))
                if conn is not None:
                    conn.close()
                conn = None
            self._wait_for_next_beat()
        if conn is not None:
            conn.close()

    def _wait_for_next_beat(self) -> None:
        """Until the next beat is due — or at once when this replica applied another config
        version, so the fleet view shows convergence when it happens, not a beat later."""
        deadline = time.monotonic() + self._beat
        while not self._stop.wait(min(_VERSION_CHECK_SECONDS, self._beat)):
            if time.monotonic() >= deadline or self._status.applied_version() != self._beat_version:
                return

    def list(self) -> list[ReplicaStatus]:
        with self._read_lock:
            for attempt in (1, 2):
                fresh = self._reader is None or self._reader.closed
                try:
                    if fresh:
                        self._reader = connect(self._url, application_name="aigw-replicas")
                    assert self._reader is not None
                    gone = self._beat * GONE_AFTER_BEATS
                    rows = self._reader.execute(_LIST, {"gone": gone}).fetchall()
                    break
                except psycopg.Error as e:
                    if self._reader is not None:
                        self._reader.close()
                    self._reader = None
                    # A connection broken by a database restart: one more try on a new one.
                    if attempt == 1 and not fresh:
                        continue
                    raise ConnectionError(describe(e, self._url)) from None
        return [
            ReplicaStatus(
                identity=Identity(
                    instance_id=iid,
                    address=address,
                    hostname=hostname,
                    pid=pid,
                    started_ns=int(started.timestamp() * 1e9),
                ),
                heartbeat_ns=int(beat.timestamp() * 1e9),
                applied_version=int(version),
                live=bool(live),
                health=health if isinstance(health, dict) else {},
                is_self=iid == self._identity.instance_id,
            )
            for iid, address, hostname, pid, started, beat, version, health, live in rows
        ]

    def shutdown(self, deadline: float) -> None:
        """Stop heartbeating and say so at once, so the fleet view shows this replica gone."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(max(deadline - time.monotonic(), 0.1))
        try:
            with connect(self._url, application_name="aigw-heartbeat") as conn:
                conn.execute(
                    "UPDATE aigw_replicas SET stopped_at = now() WHERE instance_id = %s",
                    (self._identity.instance_id,),
                )
        except psycopg.Error as e:
            _log.debug("could not mark this replica stopped: %s", describe(e, self._url))
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
