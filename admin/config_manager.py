"""Validate → apply → persist, one change at a time, with optimistic concurrency.

At start the stored config wins; with none stored, the standard OTEL_EXPORTER_OTLP_* variables
seed it (version 0, not stored). A Set or a rollback is one `ConfigStore.commit`: validated whole
(every problem reported) on top of the newest stored version, checked against
`expected_version`, applied to the live pipeline (exporters built first, so a failure switches
nothing), then made durable; if that fails the running config is applied again, so the store
and the running exporters never disagree.

Versions written elsewhere (other replicas of a fleet) arrive through the store's watcher: the
manager then applies the newest stored version. A version this replica cannot apply (say an
exporter refuses it) is logged once and left: the replica keeps its running version, and the
fleet view shows it behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace

from aigw.v1 import otel_config_pb2

from admin.config_store import Action, ConfigStore, ConfigStoreError, ConfigStoreUnavailable
from admin.otel_config import MASK, InvalidConfig
from admin.otel_env import from_environment
from admin.otel_proto import merge, section_from_proto
from gateway.telemetry.control import TelemetryControl
from gateway.telemetry.export_outcome import ExportOutcome
from gateway.telemetry.export_settings import ExporterSettings, OtelSettings, mask_query

__all__ = ["OtelConfigManager", "StaleVersion", "TestResult", "UnknownVersion"]

_log = logging.getLogger(__name__)


class UnknownVersion(Exception):
    def __init__(self, version: int) -> None:
        super().__init__(f"version: no config version {version} in the history")


class StaleVersion(Exception):
    def __init__(self, expected: int, current: int) -> None:
        super().__init__(
            f"expected_version: config is at version {current}, not {expected}; "
            "Get it again and re-apply your change"
        )


class TestResult:
    __slots__ = ("elapsed", "outcome")

    def __init__(self, outcome: ExportOutcome, elapsed: float) -> None:
        self.outcome = outcome
        self.elapsed = elapsed


class OtelConfigManager:
    """The one owner of "which OTEL config runs here"; every change goes through it."""

    def __init__(self, telemetry: TelemetryControl, store: ConfigStore) -> None:
        self._telemetry = telemetry
        self._store = store
        self._settings = OtelSettings()
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._follower: asyncio.Task[None] | None = None
        # The newest version that failed to apply here, so it is logged once, not every poll.
        self._refused_version = -1

    @property
    def settings(self) -> OtelSettings:
        return self._settings

    @property
    def store(self) -> ConfigStore:
        return self._store

    async def start(self, env: Mapping[str, str]) -> None:
        """Load the stored config (or seed from `env`), apply it, and follow changes made
        elsewhere. Raises on a bad store or bad variables: the gateway must not start exporting
        somewhere it was not told to."""
        stored = await asyncio.to_thread(self._store.load)
        settings = stored if stored is not None else from_environment(env)
        await asyncio.to_thread(self._telemetry.apply, settings)
        self._settings = settings
        _log.info(
            "OTLP export: traces %s, metrics %s (config version %d, %s)",
            _describe(settings.traces),
            _describe(settings.metrics),
            settings.version,
            "stored" if stored is not None else "from environment",
        )
        loop = asyncio.get_running_loop()
        self._follower = loop.create_task(self._follow(), name="aigw-config-follow")
        self._store.start(lambda: loop.call_soon_threadsafe(self._changed.set))

    async def shutdown(self, deadline: float) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        await asyncio.to_thread(self._store.shutdown, deadline)

    async def _follow(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            try:
                await self.sync()
            except Exception:  # the follower must outlive any one bad version
                _log.exception("could not follow a config change")

    async def sync(self) -> None:
        """Apply the newest stored version if it is not the one running here."""
        async with self._lock:
            try:
                newest = await asyncio.to_thread(self._store.latest)
            except ConfigStoreUnavailable:
                return  # the store reports it; the watcher tries again when it reconnects
            except ConfigStoreError as e:
                _log.error("cannot read the newest config version: %s", e)
                return
            if newest is None or newest.version == self._settings.version:
                return
            try:
                await asyncio.to_thread(self._telemetry.apply, newest)
            except ValueError as e:
                if newest.version != self._refused_version:
                    self._refused_version = newest.version
                    _log.error(
                        "config version %d cannot be applied on this replica, still running "
                        "version %d: %s",
                        newest.version,
                        self._settings.version,
                        e,
                    )
                return
            self._settings = newest
            await asyncio.to_thread(self._store.applied, newest)
            _log.info(
                "OTLP export follows version %d: traces %s, metrics %s",
                newest.version,
                _describe(newest.traces),
                _describe(newest.metrics),
            )

    async def _commit(
        self,
        update: Callable[[OtelSettings], OtelSettings],
        *,
        author: str,
        action: Action,
        restored_version: int = 0,
    ) -> OtelSettings:
        async with self._lock:
            running = self._settings
            try:
                new = await asyncio.to_thread(
                    self._store.commit,
                    update,
                    self._telemetry.apply,
                    author=author,
                    action=action,
                    restored_version=restored_version,
                )
            except BaseException:
                # Whatever failed after the exporters switched (a write, a commit), the running
                # config is the one that stays; re-applying an unchanged config is free.
                await asyncio.to_thread(self._telemetry.apply, running)
                raise
            self._settings = new
            await asyncio.to_thread(self._store.applied, new)
            _log.info(
                "OTLP export changed to version %d (%s by %s): traces %s, metrics %s",
                new.version,
                action,
                author,
                _describe(new.traces),
                _describe(new.metrics),
            )
            return new

    async def set(
        self,
        config: otel_config_pb2.OtelConfig,
        expected_version: int | None,
        *,
        author: str = "",
    ) -> OtelSettings:
        def update(newest: OtelSettings) -> OtelSettings:
            if expected_version is not None and expected_version != newest.version:
                raise StaleVersion(expected_version, newest.version)
            return merge(config, newest)

        return await self._commit(update, author=author, action="set")

    async def rollback(
        self, version: int, expected_version: int | None, *, author: str = ""
    ) -> OtelSettings:
        """Make `version` current again, secrets included, as a new version."""
        old = await asyncio.to_thread(self._store.get, version)
        if old is None:
            raise UnknownVersion(version)

        def update(newest: OtelSettings) -> OtelSettings:
            if expected_version is not None and expected_version != newest.version:
                raise StaleVersion(expected_version, newest.version)
            return old.settings

        return await self._commit(
            update, author=author, action="rollback", restored_version=version
        )

    async def test(self, config: otel_config_pb2.OtelConfig) -> dict[str, TestResult]:
        """One real export per section present, with the stored header values behind masks."""
        problems: list[tuple[str, str]] = []
        sections: dict[str, ExporterSettings] = {}
        for name in ("traces", "metrics"):
            if config.HasField(name):
                stored = getattr(self._settings, name)
                settings = section_from_proto(getattr(config, name), name, stored, problems)
                if not settings.endpoint:
                    problems.append((f"{name}.endpoint", "required to test"))
                sections[name] = replace(settings, enabled=True)
        if not sections:
            problems.append(("config", "give a traces or metrics section to test"))
        if problems:
            raise InvalidConfig(problems)
        results = await asyncio.gather(
            *(
                asyncio.to_thread(_test_export, name, s, self._telemetry)
                for name, s in sections.items()
            )
        )
        return dict(zip(sections, results, strict=True))


def _describe(s: ExporterSettings) -> str:
    """One section for a log line: never a secret (query values masked, the TLS key unnamed)."""
    if not s.enabled:
        return "off"
    encoding = f"/{s.encoding}" if s.protocol == "http" else ""
    tls = []
    if s.tls.ca_pem:
        tls.append("private CA")
    if s.tls.client_cert_pem:
        tls.append("client certificate")
    if s.tls.server_name:
        tls.append(f"server name {s.tls.server_name}")
    if s.tls.min_version != "1.2":
        tls.append(f"TLS >= {s.tls.min_version}")
    if s.tls.insecure_skip_verify:
        tls.append("certificate NOT verified")
    extra = f" ({', '.join(tls)})" if tls else ""
    return f"{s.protocol}{encoding} → {mask_query(s.endpoint, MASK)}{extra}"


def _test_export(
    section: str, settings: ExporterSettings, telemetry: TelemetryControl
) -> TestResult:
    return TestResult(*telemetry.test_export(section, settings))
