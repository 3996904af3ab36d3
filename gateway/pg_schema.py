"""Schema migrations for the tables the gateway keeps in a shared PostgreSQL database.

Several components share one database (the trace store, the config store …), and a fleet of
replicas may start together against an empty one, so each component brings its own ordered
list of migrations and calls `migrate` on its first successful connection:

    migrate(conn, "traces", TRACE_MIGRATIONS)

``aigw_schema_migrations(component, version, applied_at)`` records one row per applied
migration; a component's version is its highest row (0 when it has none). Migration ``i`` of
the list (counting from 1) takes the component from version ``i - 1`` to ``i``; a released
migration is never edited, only followed by a new one.

Concurrency
    The whole run is one transaction that first takes ``pg_advisory_xact_lock`` on a fixed
    key, so replicas migrating at the same time queue behind one another: the first applies
    what is missing, the others then find nothing to do. PostgreSQL's DDL is transactional,
    so a migration that fails leaves no trace (no half-created tables, no version row) and the
    next connection tries again.

Versions newer than the code
    A database migrated further than this gateway knows (a newer replica got there first)
    raises `SchemaTooNew`: the tables may have changed in ways this code cannot read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import psycopg

__all__ = ["MIGRATIONS_TABLE", "SCHEMA_LOCK_KEY", "SchemaTooNew", "migrate", "schema_version"]

MIGRATIONS_TABLE: Final = "aigw_schema_migrations"
# "aigwschm" in ASCII: any fixed 64-bit number, as long as nothing else in the database
# takes the single-key advisory lock with it.
SCHEMA_LOCK_KEY: Final = 0x6169_6777_7363_686D

_CREATE_TABLE: Final = f"""
CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
    component  text        NOT NULL,
    version    integer     NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
)
"""


class SchemaTooNew(Exception):
    """The database's schema for a component is newer than the migrations this code has."""


def migrate(conn: psycopg.Connection, component: str, migrations: Sequence[str]) -> int:
    """Apply `component`'s missing `migrations` under the schema lock; returns how many ran.

    `conn` must not be inside a transaction (autocommit, or idle): the run is one transaction
    of its own, committed before this returns. A migration is SQL text and may hold several
    statements; it must not take parameters. Raises psycopg errors as they come (a database
    that is down, a migration that fails — nothing of this run is then kept) and
    `SchemaTooNew`.
    """
    if not component:
        raise ValueError("component: must not be empty")
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        # Under the lock: concurrent CREATE TABLE IF NOT EXISTS can still collide otherwise.
        conn.execute(_CREATE_TABLE)
        current = _version(conn, component)
        if current > len(migrations):
            raise SchemaTooNew(
                f"the database's {component!r} schema is at version {current}, newer than "
                f"this gateway's {len(migrations)}; upgrade this gateway"
            )
        for version in range(current + 1, len(migrations) + 1):
            # As bytes: psycopg's typing takes only literal strings as SQL text, and this is
            # the component's own constant SQL, not built from input.
            conn.execute(migrations[version - 1].encode())
            conn.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (component, version) VALUES (%s, %s)",  # noqa: S608 - constant
                (component, version),
            )
    return len(migrations) - current


def schema_version(conn: psycopg.Connection, component: str) -> int:
    """`component`'s applied version (0 when none, or when nothing was ever migrated)."""
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (MIGRATIONS_TABLE,)).fetchone()
    if not exists or not exists[0]:
        return 0
    return _version(conn, component)


def _version(conn: psycopg.Connection, component: str) -> int:
    row = conn.execute(
        f"SELECT COALESCE(max(version), 0) FROM {MIGRATIONS_TABLE} WHERE component = %s",  # noqa: S608 - constant
        (component,),
    ).fetchone()
    return int(row[0]) if row else 0
