"""The embedded config store: the applied OTEL config and its history in one file.

`STATE_DIR/otel-config.json` holds the current version and the last `MAX_HISTORY` versions
(secrets included, so a rollback restores them). It is written atomically — a temporary file
in the same directory, fsync, rename, fsync of the directory — so a `kill -9` at any instant
leaves the old file or the new one, never a torn one. It holds header values (credentials),
so it is created 0600 inside a 0700 directory.

In fleet mode the same file is each replica's cache of the version it last applied: a replica
whose database is down at start serves on it.

Format 2 (`{"format": 2, "history": [newest first …]}`); format 1 files (the current version
alone) are read as a history of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from admin.config_store import (
    Action,
    ConfigStoreError,
    ConfigVersion,
    StoreHealth,
    Update,
    decode_section,
    encode_section,
)
from admin.otel_config import check_settings
from gateway.state_dir import private_dir
from gateway.telemetry.export_settings import OtelSettings

__all__ = ["MAX_HISTORY", "FileConfigStore"]

FORMAT = 2
MAX_HISTORY = 100


def _entry(v: ConfigVersion) -> dict[str, Any]:
    return {
        "version": v.version,
        "applied_ns": v.applied_ns,
        "author": v.author,
        "action": v.action,
        "restored_version": v.restored_version,
        "traces": encode_section(v.settings.traces),
        "metrics": encode_section(v.settings.metrics),
    }


def _version(doc: dict[str, Any]) -> ConfigVersion:
    settings = OtelSettings(
        traces=decode_section(doc["traces"]),
        metrics=decode_section(doc["metrics"]),
        version=int(doc["version"]),
    )
    action = doc.get("action", "set")
    if action not in ("set", "rollback", "seed"):
        raise ValueError(action)
    return ConfigVersion(
        settings=settings,
        applied_ns=int(doc.get("applied_ns", 0)),
        author=str(doc.get("author", "")),
        action=action,
        restored_version=int(doc.get("restored_version", 0)),
    )


class FileConfigStore:
    backend = "file"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._history: list[ConfigVersion] | None = None  # newest first, read lazily

    # ------------------------------------------------------------------ reading

    def _read(self) -> list[ConfigVersion]:
        if self._history is not None:
            return self._history
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            self._history = []
            return self._history
        except OSError as e:
            raise ConfigStoreError(str(self.path), f"cannot read: {e.strerror}") from None
        try:
            doc = json.loads(raw)
            if doc.get("format") == 1:
                history = [_version(doc)]
            elif doc.get("format") == FORMAT:
                history = [_version(entry) for entry in doc["history"]]
            else:
                raise ConfigStoreError(str(self.path), f"unknown format {doc.get('format')!r}")
        except ConfigStoreError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigStoreError(
                str(self.path),
                f"corrupt OTEL config ({type(e).__name__}); fix or remove the file to start "
                "from the environment defaults",
            ) from None
        for v in history:
            if problems := check_settings(v.settings):
                listed = "; ".join(f"{path}: {problem}" for path, problem in problems)
                raise ConfigStoreError(
                    str(self.path), f"invalid OTEL config (version {v.version}): {listed}"
                )
        self._history = history
        return history

    def load(self) -> OtelSettings | None:
        with self._lock:
            history = self._read()
        return history[0].settings if history else None

    def latest(self) -> OtelSettings | None:
        return self.load()

    def get(self, version: int) -> ConfigVersion | None:
        with self._lock:
            return next((v for v in self._read() if v.version == version), None)

    def history(self, *, page_size: int, before_version: int = 0) -> list[ConfigVersion]:
        with self._lock:
            older = [v for v in self._read() if not before_version or v.version < before_version]
        return older[:page_size]

    # ------------------------------------------------------------------ writing

    def commit(
        self,
        update: Update,
        apply: Callable[[OtelSettings], None],
        *,
        author: str,
        action: Action,
        restored_version: int = 0,
    ) -> OtelSettings:
        with self._lock:
            history = self._read()
            current = history[0].settings if history else OtelSettings()
            new = replace(update(current), version=current.version + 1)
            # Before the write: a config the exporters refuse is never saved. A failed write
            # after it is undone by the caller, which re-applies what runs now.
            apply(new)
            entry = ConfigVersion(
                settings=new,
                applied_ns=time.time_ns(),
                author=author,
                action=action,
                restored_version=restored_version,
            )
            self._write([entry, *history][:MAX_HISTORY])
        return new

    def save(self, settings: OtelSettings, *, author: str = "", action: Action = "set") -> None:
        """Record `settings` as the newest version as it is (a fleet replica's cache)."""
        with self._lock:
            history = [v for v in self._read() if v.version != settings.version]
            entry = ConfigVersion(
                settings=settings, applied_ns=time.time_ns(), author=author, action=action
            )
            self._write([entry, *history][:MAX_HISTORY])

    def applied(self, settings: OtelSettings) -> None:
        """Committed versions are on disk already."""

    def _write(self, history: list[ConfigVersion]) -> None:
        directory = self.path.parent
        private_dir(directory)
        doc = {"format": FORMAT, "history": [_entry(v) for v in history]}
        data = json.dumps(doc, indent=1).encode()
        tmp = directory / f".{self.path.name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        # Only once the file holds it: a failed write leaves memory as the disk is.
        self._history = history

    # ------------------------------------------------------------------ lifecycle

    def health(self) -> StoreHealth:
        return StoreHealth(backend=self.backend)

    def start(self, on_change: Callable[[], None]) -> None:
        """Nothing else writes this file."""

    def shutdown(self, deadline: float) -> None:
        """Every write is synchronous: nothing to flush."""
