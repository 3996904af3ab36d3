"""A real PostgreSQL server for the tests: its own cluster in a temp dir, on a free loopback port.

PostgreSQL refuses to run as root, so when the tests run as root (CI does) the cluster belongs
to the `postgres` user that Debian's package creates, and its commands run through `runuser`.
Password authentication (scram) is on for TCP, so the URLs the tests hand the gateway carry a
password, as an operator's would, and the secrets tests can hunt for it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

__all__ = ["PostgresCluster", "postgres_bin"]

_USER = "aigw_test"


def postgres_bin() -> Path | None:
    """The directory holding initdb/pg_ctl (Debian keeps them off PATH), or None."""
    if found := shutil.which("pg_ctl"):
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresCluster:
    """initdb, start, stop, restart (same port and data), and one database per test."""

    def __init__(self) -> None:
        bindir = postgres_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (make test installs it)")
        self._bin = bindir
        self.password = secrets.token_urlsafe(18)
        self.port = _free_port()
        self._root = Path(tempfile.mkdtemp(prefix="aigw-pg-"))
        self.data = self._root / "data"
        self.sockets = self._root / "sockets"
        self.sockets.mkdir()
        self._owner: str | None = None
        if os.geteuid() == 0:
            self._owner = "postgres"
            info = pwd.getpwnam("postgres")
            for p in (self._root, self.sockets):
                os.chown(p, info.pw_uid, info.pw_gid)
        os.chmod(self._root, 0o700)
        pwfile = self._root / "pw"
        pwfile.write_text(self.password + "\n")
        if self._owner:
            info = pwd.getpwnam(self._owner)
            os.chown(pwfile, info.pw_uid, info.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", _USER, "--pwfile", str(pwfile),
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        pwfile.unlink()
        self.start()
        self._counter = 0

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self._bin / tool), *args]
        if self._owner:
            cmd = ["runuser", "-u", self._owner, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stdout}\n{result.stderr}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self._root / "log"),
            "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """`fast` disconnects every client at once: what a database that goes away looks like."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{_USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; answers its URL."""
        self._counter += 1
        name = f"{prefix}_{os.getpid()}_{self._counter}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop("immediate")
        shutil.rmtree(self._root, ignore_errors=True)
