"""Where the applied OTEL config survives restarts: a file now, a shared store later.

`ConfigStore` is the seam for several replicas sharing one config (NATS KV, etcd, PostgreSQL
with change notifications): the manager needs only `load` and `save`. `FileConfigStore` writes
atomically — a temporary file in the same directory, fsync, rename, fsync of the directory — so
a `kill -9` at any instant leaves the old file or the new one, never a torn one. The file holds
header values (credentials), so it is created 0600 inside a 0700 directory.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Protocol

from admin.otel_config import check_settings
from gateway.telemetry.export_settings import ExporterSettings, OtelSettings

__all__ = ["ConfigStore", "ConfigStoreError", "FileConfigStore"]

FORMAT = 1


class ConfigStoreError(Exception):
    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")


class ConfigStore(Protocol):
    def load(self) -> OtelSettings | None: ...

    def save(self, settings: OtelSettings) -> None: ...


def _section(data: dict[str, Any]) -> ExporterSettings:
    data = dict(data)
    data["headers"] = tuple((str(k), str(v)) for k, v in data.get("headers", []))
    return ExporterSettings(**data)


def _encode(s: ExporterSettings) -> dict[str, Any]:
    return {
        "enabled": s.enabled,
        "protocol": s.protocol,
        "endpoint": s.endpoint,
        "encoding": s.encoding,
        "headers": [list(h) for h in s.headers],
        "timeout": s.timeout,
        "compression": s.compression,
        "export_interval": s.export_interval,
        "temporality": s.temporality,
    }


class FileConfigStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> OtelSettings | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ConfigStoreError(str(self.path), f"cannot read: {e.strerror}") from None
        try:
            doc = json.loads(raw)
            if doc.get("format") != FORMAT:
                raise ConfigStoreError(str(self.path), f"unknown format {doc.get('format')!r}")
            settings = OtelSettings(
                traces=_section(doc["traces"]),
                metrics=_section(doc["metrics"]),
                version=int(doc["version"]),
            )
        except ConfigStoreError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigStoreError(
                str(self.path),
                f"corrupt OTEL config ({type(e).__name__}); fix or remove the file to start "
                "from the environment defaults",
            ) from None
        if problems := check_settings(settings):
            listed = "; ".join(f"{path}: {problem}" for path, problem in problems)
            raise ConfigStoreError(str(self.path), f"invalid OTEL config: {listed}")
        return settings

    def save(self, settings: OtelSettings) -> None:
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        doc = {
            "format": FORMAT,
            "version": settings.version,
            "traces": _encode(settings.traces),
            "metrics": _encode(settings.metrics),
        }
        data = json.dumps(doc, indent=2).encode()
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
