"""`PostgresConfigStore` against a real PostgreSQL: versions, races, secrets, outages."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from admin.config_manager import StaleVersion
from admin.config_store import ConfigStoreError, ConfigStoreUnavailable
from admin.config_store_file import FileConfigStore
from admin.config_store_postgres import PostgresConfigStore
from admin.secret_box import NoKey, SecretBox, SecretBoxError, new_key
from gateway.telemetry.export_settings import ExporterSettings, OtelSettings
from tests.postgres import PostgresCluster

SECRET = "store-secret-0b7d55e1"


def settings(endpoint: str, secret: str | None = None) -> OtelSettings:
    headers = (("x-api-key", secret),) if secret else ()
    return OtelSettings(traces=ExporterSettings(enabled=True, endpoint=endpoint, headers=headers))


def store(url: str, tmp_path: Path, key: str = "", name: str = "a") -> PostgresConfigStore:
    return PostgresConfigStore(
        url,
        box=SecretBox(key, "AIGW_CONFIG_KEY"),
        cache=FileConfigStore(tmp_path / f"{name}.json"),
    )


def put(s: PostgresConfigStore, new: OtelSettings, expected: int | None = None) -> OtelSettings:
    def update(newest: OtelSettings) -> OtelSettings:
        if expected is not None and newest.version != expected:
            raise StaleVersion(expected, newest.version)
        return new

    return s.commit(update, lambda _: None, author="test", action="set")


def test_versions_history_and_secrets_round_trip(database_url: str, tmp_path: Path) -> None:
    key = new_key()
    a, b = store(database_url, tmp_path, key, "a"), store(database_url, tmp_path, key, "b")
    assert a.latest() is None
    assert put(a, settings("http://127.0.0.1:1/v1/traces", SECRET)).version == 1
    assert put(b, settings("http://127.0.0.1:2/v1/traces")).version == 2
    newest = a.latest()
    assert newest is not None
    assert newest.version == 2
    assert newest.traces.endpoint == "http://127.0.0.1:2/v1/traces"
    first = b.get(1)
    assert first is not None
    assert first.settings.traces.header_dict == {"x-api-key": SECRET}
    assert [v.version for v in a.history(page_size=10)] == [2, 1]
    assert [v.version for v in a.history(page_size=10, before_version=2)] == [1]
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT row_to_json(c)::text FROM aigw_otel_config c").fetchall()
    assert not any(SECRET in text for (text,) in rows)


def test_one_expected_version_one_winner_across_stores(database_url: str, tmp_path: Path) -> None:
    stores = [store(database_url, tmp_path, name=str(i)) for i in range(4)]
    put(stores[0], settings("http://127.0.0.1:9/v1/traces"))
    results: list[str] = []
    barrier = threading.Barrier(8)

    def race(i: int) -> None:
        barrier.wait()
        try:
            put(stores[i % 4], settings(f"http://127.0.0.1:{10 + i}/v1/traces"), expected=1)
            results.append("won")
        except StaleVersion:
            results.append("stale")

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["stale"] * 7 + ["won"]
    assert [v.version for v in stores[1].history(page_size=10)] == [2, 1]


def test_secrets_need_a_key_and_the_right_key(database_url: str, tmp_path: Path) -> None:
    keyless = store(database_url, tmp_path)
    with pytest.raises(NoKey, match="AIGW_CONFIG_KEY"):
        put(keyless, settings("http://127.0.0.1:1/v1/traces", SECRET))
    assert keyless.latest() is None  # nothing written
    old, new = new_key(), new_key()
    put(store(database_url, tmp_path, old, "o"), settings("http://127.0.0.1:1/v1/t", SECRET))
    # Rotation: the new key first encrypts, the old one second still decrypts.
    rotated = store(database_url, tmp_path, f"{new},{old}", "r")
    first = rotated.latest()
    assert first is not None
    assert first.traces.header_dict == {"x-api-key": SECRET}
    put(rotated, settings("http://127.0.0.1:2/v1/t", SECRET))
    second = store(database_url, tmp_path, new, "n").latest()
    assert second is not None
    assert second.traces.header_dict == {"x-api-key": SECRET}
    # A key that never encrypted anything here is refused, by name, without the secret.
    with pytest.raises(ConfigStoreError, match="do not decrypt") as wrong:
        store(database_url, tmp_path, new_key(), "w").latest()
    assert SECRET not in str(wrong.value)


def test_a_bad_key_is_named_never_echoed() -> None:
    with pytest.raises(SecretBoxError, match="AIGW_CONFIG_KEY: key 2") as bad:
        SecretBox(f"{new_key()},not-a-key-{SECRET}", "AIGW_CONFIG_KEY")
    assert SECRET not in str(bad.value)


def test_database_down_reads_the_cache_and_changes_nothing(
    database_url: str, tmp_path: Path, pg_cluster: PostgresCluster
) -> None:
    s = store(database_url, tmp_path)
    applied = put(s, settings("http://127.0.0.1:5/v1/traces"))
    s.applied(applied)
    s.shutdown(0)
    pg_cluster.stop()
    try:
        fresh = store(database_url, tmp_path)  # same cache file "a.json"
        loaded = fresh.load()
        assert loaded == applied
        with pytest.raises(ConfigStoreUnavailable) as down:
            put(fresh, settings("http://127.0.0.1:6/v1/traces"))
        assert pg_cluster.password not in str(down.value)
        assert not fresh.health().connected
        assert pg_cluster.password not in fresh.health().last_error
    finally:
        pg_cluster.start()
    newest = fresh.latest()
    assert newest is not None
    assert newest.version == 1
    assert fresh.health().connected


def test_watcher_calls_back_on_a_change_elsewhere(database_url: str, tmp_path: Path) -> None:
    writer = store(database_url, tmp_path)
    writer.latest()  # schema in place
    # Polling every 30 s: only the notification can make it within the wait below.
    watching = PostgresConfigStore(
        database_url,
        box=SecretBox("", "AIGW_CONFIG_KEY"),
        cache=FileConfigStore(tmp_path / "w.json"),
        poll_seconds=30.0,
    )
    seen = threading.Event()
    calls: list[int] = []

    def on_change() -> None:
        newest = writer.latest()
        calls.append(newest.version if newest else 0)
        if newest is not None and newest.version == 1:
            seen.set()

    watching.start(on_change)
    try:
        # The first callback comes once it listens (it looks for changes missed meanwhile).
        deadline = threading.Event()
        while not calls and not deadline.wait(0.05):
            pass
        put(writer, settings("http://127.0.0.1:7/v1/traces"))
        assert seen.wait(10), calls
    finally:
        watching.shutdown(0)
