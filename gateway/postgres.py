"""Connections to the fleet's PostgreSQL, and the one place its errors become words.

The database URL carries a password, so it is never logged or put in an error: `connect`
registers the password with the log redactor, and `reason`/`describe` turn a psycopg error into
one line — fixed phrases for connection failures (libpq's texts name host, port and user), the
server's primary message with its SQLSTATE otherwise — used by the config store, the replica
registry and the trace store alike. Every connection is autocommit (transactions are
explicit) with short connect and statement timeouts, so a database that vanishes costs a
bounded wait on a background thread, never a hung one.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg
from psycopg.conninfo import conninfo_to_dict

from gateway.redaction import REDACTOR

__all__ = [
    "CONNECT_TIMEOUT_SECONDS",
    "SESSION_OPTIONS",
    "TCP_SETTINGS",
    "connect",
    "describe",
    "is_unavailable",
    "reason",
    "safe_target",
    "target_of",
]

CONNECT_TIMEOUT_SECONDS: Final = 3
# Server-side settings for every session (config store, replicas, trace store): a statement,
# a lock wait or an idle transaction cannot hold a sick database for long; and no JIT: these
# are short statements over a few hundred rows, and on a table whose statistics lag behind its
# growth the planner's estimates cross jit_above_cost, so compiling a statement (25-100 ms
# measured) cost several times more than running it.
SESSION_OPTIONS: Final = (
    "-c statement_timeout=15000 -c lock_timeout=10000 "
    "-c idle_in_transaction_session_timeout=60000 -c jit=off"
)
# libpq settings that bound how long a vanished (not refusing) server can hold a call: TCP
# keepalives notice a dead peer, tcp_user_timeout a peer that stopped acknowledging.
TCP_SETTINGS: Final = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "20000",
}


# libpq's connection-failure texts name the host, port and user; these fixed phrases are what
# is kept of them (first match wins).
_CONNECTION_REASONS: Final = (
    ("password authentication failed", "password authentication failed"),
    ("no password supplied", "no password supplied"),
    ("connection refused", "connection refused"),
    ("timeout expired", "connection timed out"),
    ("timed out", "connection timed out"),
    ("could not translate host name", "host name not found"),
    ("name or service not known", "host name not found"),
    ("no route to host", "no route to host"),
    ("network is unreachable", "network unreachable"),
    ("pg_hba.conf", "connection not allowed by pg_hba.conf"),
    ("does not exist", "database or role does not exist"),
    ("too many", "too many connections"),
    ("remaining connection slots", "too many connections"),
    ("starting up", "database starting up"),
    ("shutting down", "database shutting down"),
    ("recovery", "database in recovery"),
    ("ssl", "SSL negotiation failed"),
    ("server closed the connection", "connection lost"),
    ("connection is closed", "connection lost"),
    ("connection is lost", "connection lost"),
    ("consuming input failed", "connection lost"),
    ("terminating connection", "connection lost"),
)


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


def target_of(info: dict[str, Any]) -> str:
    """`host:port` of parsed connection info, for messages: no user, no password."""
    host = str(info.get("host") or info.get("hostaddr") or "localhost")
    port = str(info.get("port") or "5432")
    return f"{host}:{port}"


def safe_target(url: str) -> str:
    """`host:port` of a URL, for messages."""
    try:
        return target_of(conninfo_to_dict(url))
    except psycopg.ProgrammingError:
        return "<unparsable database URL>"


def connect(url: str, *, application_name: str) -> psycopg.Connection:
    """An autocommit connection; raises psycopg errors (describe them with `describe`)."""
    REDACTOR.set_secrets(f"database-password-{hash(url)}", _secrets(url))
    info = conninfo_to_dict(url)
    options = " ".join(filter(None, (str(info.get("options") or ""), SESSION_OPTIONS)))
    extra = {k: v for k, v in TCP_SETTINGS.items() if k not in info}
    return psycopg.connect(
        url,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        application_name=str(info.get("application_name") or application_name),
        options=options,
        **extra,
    )


def is_unavailable(exc: BaseException) -> bool:
    """True for errors that say the database is away (retry later), not that a query is wrong."""
    # Class 57/08 errors (admin shutdown, cannot connect now) are OperationalErrors.
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def reason(exc: BaseException) -> str:
    """A one-line reason for `exc` without the user name libpq puts in connection errors."""
    if not isinstance(exc, psycopg.Error):
        return type(exc).__name__
    sqlstate = exc.sqlstate or ""
    # Class 08 (connection) and 28 (authorization) texts name the user; others are the
    # server's words about the statement.
    if sqlstate and sqlstate[:2] not in ("08", "28"):
        primary = exc.diag.message_primary or type(exc).__name__
        return f"{' '.join(primary.split())[:300]} (SQLSTATE {sqlstate})"
    lowered = str(exc).lower()
    for needle, text in _CONNECTION_REASONS:
        if needle in lowered:
            return text + (f" (SQLSTATE {sqlstate})" if sqlstate else "")
    return "connection failed" if is_unavailable(exc) else type(exc).__name__


def describe(exc: BaseException, url: str) -> str:
    """`host:port: reason` — never the URL, the user or the password."""
    text = f"{safe_target(url)}: {reason(exc)}"
    for secret in (url, *_secrets(url)):
        text = text.replace(secret, "[REDACTED]")
    return text
