"""The fleet's config store: every applied version a row in PostgreSQL, changes pushed to all.

Table `aigw_otel_config`, one row per version (never updated): when, by whom, how (set,
rollback), the config as JSON with header *names* only, and the header values as one Fernet
token (`secret_box.py`). A commit takes a transaction-scoped advisory lock, reads the newest
row, lets the caller's `update` validate and merge on top of it, inserts version + 1, applies it
locally, and `NOTIFY aigw_otel_config, '<version>'` in the same transaction — delivered to every
listening replica only if it commits. The version column is the primary key as well, so even a
writer that skipped the lock could not make two versions with one number.

Other replicas learn of a change two ways: a watcher thread LISTENs (milliseconds), and checks
the newest version every `poll_seconds` anyway, because notifications sent while it was
disconnected are lost. On reconnect it checks at once. It calls `on_change`; the config manager
then reads the newest version and applies it.

The database may be down at any time: reads and commits raise `ConfigStoreUnavailable` (a
Set fails with UNAVAILABLE, nothing changed), the watcher reconnects with backoff, and at start
`load` falls back to the replica's cache (`FileConfigStore` in its state directory), the version
it last applied.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import replace
from typing import Any, TypeVar

import psycopg

from admin.config_store import (
    Action,
    ConfigStoreError,
    ConfigStoreUnavailable,
    ConfigVersion,
    StoreHealth,
    Update,
    decode_section,
    encode_section,
    section_secrets,
)
from admin.config_store_file import FileConfigStore
from admin.secret_box import SecretBox, SecretBoxError
from gateway.pg_schema import SchemaTooNew, migrate
from gateway.postgres import connect, describe, is_unavailable
from gateway.telemetry.export_settings import OtelSettings

__all__ = ["MIGRATIONS", "PostgresConfigStore"]

_log = logging.getLogger(__name__)

CHANNEL = "aigw_otel_config"
# pg_advisory_xact_lock key for commits: "aigw" + "cfg" in ASCII, any fixed 64-bit number.
_COMMIT_LOCK = 0x61696777_636667
_SECTIONS = ("traces", "metrics")

MIGRATIONS = (
    """
    CREATE TABLE aigw_otel_config (
        version          bigint      PRIMARY KEY,
        applied_at       timestamptz NOT NULL DEFAULT now(),
        author           text        NOT NULL,
        action           text        NOT NULL,
        restored_version bigint      NOT NULL DEFAULT 0,
        config           jsonb       NOT NULL,
        secrets          text        NOT NULL DEFAULT ''
    );
    CREATE TABLE aigw_replicas (
        instance_id      text        PRIMARY KEY,
        address          text        NOT NULL,
        hostname         text        NOT NULL,
        pid              integer     NOT NULL,
        started_at       timestamptz NOT NULL,
        heartbeat_at     timestamptz NOT NULL,
        stopped_at       timestamptz,
        applied_version  bigint      NOT NULL,
        health           jsonb       NOT NULL
    );
    """,
)

_T = TypeVar("_T")

_COLUMNS = "version, applied_at, author, action, restored_version, config, secrets"


class PostgresConfigStore:
    backend = "postgres"

    def __init__(
        self,
        url: str,
        *,
        box: SecretBox,
        cache: FileConfigStore,
        poll_seconds: float = 2.0,
    ) -> None:
        self._url = url
        self._box = box
        self._cache = cache
        self._poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self._migrated = False
        self._health_lock = threading.Lock()
        self._connected = True
        self._last_error = ""
        self._last_error_ns = 0
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._listener: psycopg.Connection | None = None

    # ------------------------------------------------------------------ connections

    def _mark(self, error: str | None) -> None:
        with self._health_lock:
            was = self._connected
            self._connected = error is None
            if error is not None:
                self._last_error, self._last_error_ns = error, time.time_ns()
        if was and error is not None:
            _log.warning("config store unreachable: %s", error)
        elif not was and error is None:
            _log.info("config store reachable again")

    def _open(self) -> psycopg.Connection:
        conn = connect(self._url, application_name="aigw-config")
        if not self._migrated:
            try:
                migrate(conn, "config", MIGRATIONS)
            except SchemaTooNew as e:
                conn.close()
                raise ConfigStoreError("config store", str(e)) from None
            except BaseException:
                conn.close()
                raise
            self._migrated = True
        return conn

    def _run(self, work: Callable[[psycopg.Connection], _T], *, retry: bool = True) -> _T:
        """`work` on the command connection, (re)opened as needed; database errors become
        store errors. A connection found broken (the database restarted since it was last
        used) is replaced and `work` tried once more when `retry` — never for a commit, whose
        outcome a broken connection leaves unknown."""
        with self._lock:
            for attempt in (1, 2):
                fresh = self._conn is None or self._conn.closed
                try:
                    if fresh:
                        self._conn = self._open()
                    assert self._conn is not None
                    result = work(self._conn)
                except psycopg.Error as e:
                    conn = self._conn
                    if is_unavailable(e) or conn is None or conn.broken or conn.closed:
                        self._drop_connection()
                        if retry and attempt == 1 and not fresh:
                            continue
                        reason = describe(e, self._url)
                        self._mark(reason)
                        raise ConfigStoreUnavailable("config store", reason) from None
                    raise ConfigStoreError("config store", describe(e, self._url)) from None
                self._mark(None)
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    # ------------------------------------------------------------------ rows

    def _row_version(self, row: tuple[Any, ...]) -> ConfigVersion:
        version, applied_at, author, action, restored, config, sealed = row
        values: dict[str, Any] = {}
        if sealed:
            try:
                values = json.loads(self._box.open(sealed))
            except SecretBoxError as e:
                raise ConfigStoreError(f"config store version {version}", str(e)) from None
        # "secrets": what the plain column masks besides header values (the endpoint with its
        # query values, the TLS key); rows written before it existed have none.
        secrets = values.get("secrets", {})
        try:
            settings = OtelSettings(
                traces=decode_section(
                    config["traces"], values.get("traces", {}), secrets.get("traces")
                ),
                metrics=decode_section(
                    config["metrics"], values.get("metrics", {}), secrets.get("metrics")
                ),
                version=int(version),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigStoreError(
                f"config store version {version}", f"malformed row ({type(e).__name__})"
            ) from None
        return ConfigVersion(
            settings=settings,
            applied_ns=int(applied_at.timestamp() * 1e9),
            author=author,
            action=action,
            restored_version=int(restored),
        )

    def _newest(self, conn: psycopg.Connection) -> ConfigVersion | None:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM aigw_otel_config ORDER BY version DESC LIMIT 1"  # noqa: S608
        ).fetchone()
        return None if row is None else self._row_version(row)

    def _seal(self, settings: OtelSettings) -> tuple[dict[str, Any], str]:
        """The plain `config` column (no secret in it) and the sealed `secrets` column: header
        values per section, and under "secrets" the endpoint when its query holds values and
        the TLS key (`section_secrets`)."""
        config = {s: encode_section(getattr(settings, s), with_values=False) for s in _SECTIONS}
        values: dict[str, Any] = {s: getattr(settings, s).header_dict for s in _SECTIONS}
        secrets = {s: found for s in _SECTIONS if (found := section_secrets(getattr(settings, s)))}
        if secrets:
            values["secrets"] = secrets
        if not any(values.values()):
            return config, ""
        return config, self._box.seal(json.dumps(values).encode())

    # ------------------------------------------------------------------ ConfigStore

    def load(self) -> OtelSettings | None:
        try:
            newest = self.latest()
        except ConfigStoreUnavailable as e:
            cached = self._cache.load()
            _log.warning(
                "config store unreachable at start (%s); serving on the cached config, "
                "version %d, until it returns",
                e,
                cached.version if cached else 0,
            )
            return cached
        return newest

    def latest(self) -> OtelSettings | None:
        newest = self._run(self._newest)
        return None if newest is None else newest.settings

    def get(self, version: int) -> ConfigVersion | None:
        row = self._run(
            lambda conn: conn.execute(
                f"SELECT {_COLUMNS} FROM aigw_otel_config WHERE version = %s",  # noqa: S608
                (version,),
            ).fetchone()
        )
        return None if row is None else self._row_version(row)

    def history(self, *, page_size: int, before_version: int = 0) -> list[ConfigVersion]:
        rows = self._run(
            lambda conn: conn.execute(
                f"SELECT {_COLUMNS} FROM aigw_otel_config"  # noqa: S608
                " WHERE %(before)s = 0 OR version < %(before)s"
                " ORDER BY version DESC LIMIT %(limit)s",
                {"before": before_version, "limit": page_size},
            ).fetchall()
        )
        return [self._row_version(row) for row in rows]

    def commit(
        self,
        update: Update,
        apply: Callable[[OtelSettings], None],
        *,
        author: str,
        action: Action,
        restored_version: int = 0,
    ) -> OtelSettings:
        def work(conn: psycopg.Connection) -> OtelSettings:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_COMMIT_LOCK,))
                newest = self._newest(conn)
                current = newest.settings if newest is not None else OtelSettings()
                new = replace(update(current), version=current.version + 1)
                config, sealed = self._seal(new)
                conn.execute(
                    "INSERT INTO aigw_otel_config"
                    " (version, author, action, restored_version, config, secrets)"
                    " VALUES (%s, %s, %s, %s, %s, %s)",
                    (new.version, author, action, restored_version, json.dumps(config), sealed),
                )
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(new.version)))
                # Last before COMMIT: a config the exporters refuse is never stored.
                apply(new)
            return new

        # A cheap statement first, so a connection broken by a database restart is replaced
        # before the commit runs (which is never retried).
        self._run(lambda conn: conn.execute("SELECT 1"))
        return self._run(work, retry=False)

    def applied(self, settings: OtelSettings) -> None:
        try:
            self._cache.save(settings)
        except OSError as e:
            _log.warning("could not cache the applied config in the state directory: %s", e)

    def health(self) -> StoreHealth:
        with self._health_lock:
            return StoreHealth(
                backend=self.backend,
                connected=self._connected,
                last_error="" if self._connected else self._last_error,
                last_error_ns=self._last_error_ns,
            )

    # ------------------------------------------------------------------ watching

    def start(self, on_change: Callable[[], None]) -> None:
        if self._watcher is not None:
            return
        self._watcher = threading.Thread(
            target=self._watch, args=(on_change,), name="aigw-config-watch", daemon=True
        )
        self._watcher.start()

    def _watch(self, on_change: Callable[[], None]) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                with connect(self._url, application_name="aigw-config-listen") as conn:
                    self._listener = conn
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._mark(None)
                    backoff = 0.2
                    # Whatever was sent while we were away is lost: look now.
                    on_change()
                    while not self._stop.is_set():
                        # Wakes on a notification or after poll_seconds; either way, look.
                        for _ in conn.notifies(timeout=self._poll_seconds, stop_after=1):
                            pass
                        if self._stop.is_set():
                            return
                        conn.execute("SELECT 1")  # notices a dead connection while idle
                        on_change()
            except psycopg.Error as e:
                if self._stop.is_set():
                    return
                self._mark(describe(e, self._url))
            finally:
                self._listener = None
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def shutdown(self, deadline: float) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(max(deadline - time.monotonic(), 0.1))
        with self._lock:
            self._drop_connection()
