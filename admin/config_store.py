"""Where the applied OTEL config lives: the interface, its records, and their JSON form.

Two backends, chosen once at start (`gateway/backends.py`); nothing else knows which is in use:

- `FileConfigStore` (`config_store_file.py`): one gateway, the config and its history in a file
  in the state directory;
- `PostgresConfigStore` (`config_store_postgres.py`): a fleet, every version a row, replicas told
  of changes by LISTEN/NOTIFY plus a periodic version check.

A change is one `commit(update, …)`: the store reads the newest version *under its own lock*,
hands it to `update` (which validates, merges and checks `expected_version`, and may raise to
abort), writes the result as the next version and calls `apply` with it (exporters built and
switched; raising aborts the write) before the write is final. So
of two concurrent commits based on one version, exactly one wins, in one process or across a
fleet. Errors: `ConfigStoreError` (unusable store: corrupt file, undecryptable row),
`ConfigStoreUnavailable` (the database cannot be reached now; nothing was changed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from admin.otel_config import MASK
from gateway.telemetry.export_settings import (
    ExporterSettings,
    OtelSettings,
    TlsSettings,
    mask_query,
    query_values,
)

__all__ = [
    "ConfigStore",
    "ConfigStoreError",
    "ConfigStoreUnavailable",
    "ConfigVersion",
    "StoreHealth",
    "Update",
    "decode_section",
    "encode_section",
    "section_secrets",
]

Action = Literal["set", "rollback", "seed"]
Update = Callable[[OtelSettings], OtelSettings]


class ConfigStoreError(Exception):
    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")


class ConfigStoreUnavailable(ConfigStoreError):
    """The shared store cannot be reached right now; nothing was read or changed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigVersion:
    """One applied config, as the history keeps it (secrets included: rollback restores them)."""

    settings: OtelSettings
    applied_ns: int = 0
    # The admin token's name, the caller's address, or "environment"; never a token.
    author: str = ""
    action: Action = "set"
    restored_version: int = 0

    @property
    def version(self) -> int:
        return self.settings.version


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreHealth:
    backend: str
    connected: bool = True
    # Why not connected; never a URL or a password.
    last_error: str = ""
    last_error_ns: int = 0


class ConfigStore(Protocol):
    backend: str

    def load(self) -> OtelSettings | None:
        """At start: the newest version, or None when nothing was ever stored. A shared store
        that cannot be reached answers the version this replica last applied (its cache)."""
        ...

    def latest(self) -> OtelSettings | None:
        """The newest stored version now. Raises `ConfigStoreUnavailable`."""
        ...

    def commit(
        self,
        update: Update,
        apply: Callable[[OtelSettings], None],
        *,
        author: str,
        action: Action,
        restored_version: int = 0,
    ) -> OtelSettings:
        """Write `update(newest)` as the next version and `apply` it before it is committed
        (a config the exporters refuse is never stored). See the module docstring."""
        ...

    def get(self, version: int) -> ConfigVersion | None: ...

    def history(self, *, page_size: int, before_version: int = 0) -> list[ConfigVersion]:
        """Newest first; only versions below `before_version` when it is not 0."""
        ...

    def applied(self, settings: OtelSettings) -> None:
        """This replica now runs `settings` (kept as its start-up cache where that matters)."""
        ...

    def health(self) -> StoreHealth: ...

    def start(self, on_change: Callable[[], None]) -> None:
        """Begin watching for versions written elsewhere; `on_change` is called from another
        thread, and may be called for nothing new."""
        ...

    def shutdown(self, deadline: float) -> None: ...


# --- the JSON form of a section, shared by both backends ----------------------------------------

_FIELDS = (
    "enabled",
    "protocol",
    "endpoint",
    "encoding",
    "timeout",
    "compression",
    "export_interval",
    "temporality",
)
_TLS_FIELDS = (
    "ca_pem",
    "client_cert_pem",
    "client_key_pem",
    "server_name",
    "min_version",
    "insecure_skip_verify",
)


def encode_section(s: ExporterSettings, *, with_values: bool = True) -> dict[str, Any]:
    """`with_values=False` keeps no secret: header names only, the endpoint's query values
    masked, no TLS key (the secrets travel apart, encrypted: `section_secrets`)."""
    doc: dict[str, Any] = {name: getattr(s, name) for name in _FIELDS}
    doc["headers"] = [[k, v if with_values else ""] for k, v in s.headers]
    if not with_values:
        doc["endpoint"] = mask_query(s.endpoint, MASK)
    if s.tls.configured:
        tls = {name: getattr(s.tls, name) for name in _TLS_FIELDS}
        if not with_values:
            tls["client_key_pem"] = ""
        doc["tls"] = tls
    return doc


def section_secrets(s: ExporterSettings) -> dict[str, str]:
    """What `encode_section(with_values=False)` leaves out besides header values: the endpoint
    when its query holds values, the TLS key when there is one."""
    secrets = {}
    if query_values(s.endpoint):
        secrets["endpoint"] = s.endpoint
    if s.tls.client_key_pem:
        secrets["client_key_pem"] = s.tls.client_key_pem
    return secrets


def decode_section(
    doc: dict[str, Any],
    values: dict[str, str] | None = None,
    secrets: dict[str, str] | None = None,
) -> ExporterSettings:
    """The settings `doc` holds; `values` (name → secret) fill in headers stored apart, and
    `secrets` (`section_secrets`) the endpoint and TLS key."""
    data = {k: doc[k] for k in _FIELDS if k in doc}
    headers = [(str(k), str(v)) for k, v in doc.get("headers", [])]
    if values is not None:
        headers = [(k, values.get(k, "")) for k, _ in headers]
    tls_doc = doc.get("tls") or {}
    tls = {k: tls_doc[k] for k in _TLS_FIELDS if k in tls_doc}
    if secrets:
        if "endpoint" in secrets:
            data["endpoint"] = secrets["endpoint"]
        if "client_key_pem" in secrets:
            tls["client_key_pem"] = secrets["client_key_pem"]
    return ExporterSettings(**data, headers=tuple(headers), tls=TlsSettings(**tls))
