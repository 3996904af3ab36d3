"""Where state lives, chosen once at start: embedded (file + SQLite) or shared (PostgreSQL).

    [store] database_url_env unset  →  FileConfigStore + SqliteTraceStore + LocalReplicas
    [store] database_url_env = "X"  →  PostgresConfigStore + PostgresTraceStore + PostgresReplicas

This is the only module that knows which backends exist; everything else holds the
`ConfigStore`, `TraceStore` and `Replicas` interfaces. The URL is read from the named variable
here and handed to the backends, never logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from admin.config_store import ConfigStore
from admin.config_store_file import FileConfigStore
from admin.replicas import LocalReplicas, PostgresReplicas, Replicas, StatusSource
from admin.secret_box import SecretBox, SecretBoxError
from gateway.config import GatewayConfig
from gateway.telemetry.trace_store import TraceStore
from gateway.telemetry.trace_store_sqlite import SqliteTraceStore

__all__ = ["OTEL_CONFIG_FILE", "TRACE_STORE_FILE", "BackendError", "Backends", "open_backends"]

OTEL_CONFIG_FILE = "otel-config.json"
TRACE_STORE_FILE = "traces.db"


class BackendError(Exception):
    """The store section names something that is not there (an unset variable, a bad key)."""


@dataclass(frozen=True, slots=True)
class Backends:
    trace_store: TraceStore
    config_store: ConfigStore
    url: str = ""

    def replicas(self, status: StatusSource, config: GatewayConfig) -> Replicas:
        if not self.url:
            return LocalReplicas(status)
        return PostgresReplicas(
            self.url,
            status,
            heartbeat_seconds=config.store.heartbeat_seconds,
            forget_seconds=config.store.replica_forget_seconds,
        )


def open_backends(config: GatewayConfig, env: Mapping[str, str], replica: str) -> Backends:
    state_dir: Path = config.server.state_dir
    telemetry = config.telemetry
    max_age = telemetry.trace_store_max_age_hours * 3600
    cache = FileConfigStore(state_dir / OTEL_CONFIG_FILE)
    store = config.store
    if not store.shared:
        return Backends(
            trace_store=SqliteTraceStore.open(
                state_dir / TRACE_STORE_FILE,
                max_spans=telemetry.trace_store_max_spans,
                max_age_seconds=max_age,
            ),
            config_store=cache,
        )
    url = env.get(store.database_url_env, "")
    if not url:
        raise BackendError(
            f"store.database_url_env: the variable {store.database_url_env} is not set (it "
            "should hold the PostgreSQL URL)"
        )
    # Only a fleet pays for loading the PostgreSQL backends.
    from admin.config_store_postgres import PostgresConfigStore
    from gateway.telemetry.trace_store_postgres import PostgresTraceStore

    try:
        box = SecretBox(env.get(store.encryption_key_env, ""), store.encryption_key_env)
    except SecretBoxError as e:
        raise BackendError(str(e)) from None
    return Backends(
        trace_store=PostgresTraceStore.open(
            url,
            max_spans=telemetry.trace_store_max_spans,
            max_age_seconds=max_age,
            replica=replica,
        ),
        config_store=PostgresConfigStore(
            url, box=box, cache=cache, poll_seconds=store.heartbeat_seconds
        ),
        url=url,
    )
