"""Connections to the fleet's PostgreSQL, and the one place its errors become words.

The database URL carries a password, so it is never logged or put in an error: `connect`
registers it (and the password alone) with the log redactor, and `describe` turns a psycopg
error into a one-line reason without either. Every connection is autocommit (transactions are
explicit) with short connect and statement timeouts, so a database that vanishes costs a
bounded wait on a background thread, never a hung one.
"""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict

from gateway.redaction import REDACTOR

__all__ = ["connect", "describe", "is_unavailable", "safe_target"]

CONNECT_TIMEOUT_SECONDS = 3
# A statement that runs longer than this is cancelled by the server: writers must not hold
# locks forever on a sick database.
STATEMENT_TIMEOUT_MS = 15_000


def _secrets(url: str) -> list[str]:
    """The password alone: registering a whole `key=value` connection string would make the
    redactor blank its ordinary words (`localhost`, `password`) everywhere."""
    secrets: list[str] = []
    try:
        password = conninfo_to_dict(url).get("password")
    except psycopg.ProgrammingError:
        password = None
    if password:
        secrets.append(str(password))
    return secrets


def safe_target(url: str) -> str:
    """`host:port/dbname` for messages: no user, no password."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparsable database URL>"
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


def connect(url: str, *, application_name: str) -> psycopg.Connection:
    """An autocommit connection; raises psycopg errors (describe them with `describe`)."""
    REDACTOR.set_secrets(f"database-password-{hash(url)}", _secrets(url))
    return psycopg.connect(
        url,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        application_name=application_name,
        options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
    )


def is_unavailable(exc: BaseException) -> bool:
    """True for errors that say the database is away (retry later), not that a query is wrong."""
    # Class 57/08 errors (admin shutdown, cannot connect now) are OperationalErrors.
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def describe(exc: BaseException, url: str) -> str:
    """One line naming what failed, with the URL and password cut out."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    for secret in (url, *_secrets(url)):
        text = text.replace(secret, "[REDACTED]")
    return f"{safe_target(url)}: {text[:300]}"
