"""The PostgreSQL trace store as a fleet uses it: several stores ("replicas") on one real
database, migrating together, writing the same traces at once, sharing retention. Outages
and credentials are in test_trace_store_postgres_outage.py; what every backend does is in
test_trace_store_contract.py."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from opentelemetry.sdk.trace import ReadableSpan

from gateway.pg_schema import MIGRATIONS_TABLE, SchemaTooNew, migrate, schema_version
from gateway.telemetry import trace_store_postgres
from gateway.telemetry.trace_store import TraceStoreError
from gateway.telemetry.trace_store_postgres import MIGRATIONS, PostgresTraceStore
from gateway.telemetry.trace_store_sqlite import SqliteTraceStore
from tests.postgres import PostgresCluster
from tests.test_trace_store_support import (
    DAY,
    MS,
    NOW,
    S,
    SpanMaker,
    all_traces,
    reset_postgres,
    stored_span_total,
    summary,
    trace_id_of,
)

Opener = Callable[..., PostgresTraceStore]


@pytest.fixture(scope="module")
def shared_database(pg_cluster: PostgresCluster) -> Iterator[tuple[str, psycopg.Connection]]:
    """One database for the tests that need no empty one (creating a database costs a
    second on a busy machine), and a connection to empty its tables with."""
    url = pg_cluster.create_database("pgstore")
    with psycopg.connect(url, autocommit=True) as admin:
        yield url, admin


@pytest.fixture
def trace_db(shared_database: tuple[str, psycopg.Connection]) -> str:
    """The shared database with its trace tables emptied."""
    url, admin = shared_database
    reset_postgres(admin)
    return url


@pytest.fixture
def open_pg(trace_db: str) -> Iterator[Opener]:
    """Opens stores on the emptied shared database and closes them afterwards."""
    opened: list[PostgresTraceStore] = []

    def open_(replica: str = "r", *, max_spans: int = 100_000, max_age: float = DAY) -> Any:
        store = PostgresTraceStore.open(
            trace_db, max_spans=max_spans, max_age_seconds=max_age, replica=replica
        )
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


def run_threads(n: int, work: Callable[[int], None]) -> None:
    """`work(i)` on n threads started together; re-raises the first failure."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(10)
            work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not [t for t in threads if t.is_alive()], "a thread hung"
    if errors:
        raise errors[0]


# ---------------------------------------------------------------------------- replicas


def test_two_replicas_see_each_others_traces(open_pg):
    a, b = open_pg("replica-a"), open_pg("replica-b")
    from_a = SpanMaker(replica="replica-a").request(start=NOW - 2 * S, duration=MS)
    from_b = SpanMaker(replica="replica-b").request(start=NOW - S, duration=MS, route="beta")
    a.write(from_a)
    b.write(from_b)
    for store in (a, b):
        listed = [(t.trace_id, t.replica, t.model) for t in all_traces(store)]
        assert listed == [
            (trace_id_of(from_b[0]), "replica-b", "beta"),
            (trace_id_of(from_a[0]), "replica-a", "gpt-test"),
        ]
        assert [s.name for s in store.get_trace(trace_id_of(from_a[0]))] == [
            "aigw.v1.Completion/Complete",
            "chat gpt-test-upstream",
        ]
    # Page tokens are the database's, not a replica's: a page from A continues on B.
    page, token = a.list_traces(page_size=1)
    rest, end = b.list_traces(page_size=1, page_token=token)
    assert ([t.replica for t in page + rest], end) == (["replica-b", "replica-a"], "")


def test_replicas_writing_one_trace_at_once_leave_the_right_summaries(open_pg, tmp_path):
    """Two replicas write halves of the same traces concurrently, in many small batches;
    every summary must come out as one store writing all the spans alone computes it."""
    makers = [SpanMaker(replica="replica-a"), SpanMaker(replica="replica-b")]
    halves: list[list[ReadableSpan]] = [[], []]
    for t in range(30):
        start = NOW - (100 - t) * S
        root = makers[0].span("root", start=start, end=start + 50 * MS)
        halves[0].append(root)
        for k in range(1, 12):
            half = k % 2
            halves[half].append(
                makers[half].span(
                    f"c{k}",
                    start=start + k * MS,
                    end=start + (k + 1) * MS,
                    parent=root,
                    attrs={"gen_ai.request.model": f"m{t}"},
                    error="boom" if k == 7 else None,
                )
            )
    stores = [open_pg("replica-a"), open_pg("replica-b")]

    def write_half(i: int) -> None:
        spans = halves[i]
        # Interleaved traces in each batch: both replicas touch the same traces at once.
        for j in range(0, len(spans), 7):
            stores[i].write(spans[j : j + 7])

    run_threads(2, write_half)

    with SqliteTraceStore.open(tmp_path / "t.db", max_spans=10**6, max_age_seconds=DAY) as ref:
        ref.write(halves[0] + halves[1])
        expected = all_traces(ref)
    assert len(expected) == 30
    for store in stores:
        assert all_traces(store) == expected
    assert {t.span_count for t in expected} == {12}
    assert {t.replica for t in expected} == {"replica-a"}


def test_nul_characters_in_text_columns_do_not_fail_the_batch(open_pg):
    store = open_pg()
    maker = SpanMaker()
    odd = maker.span(
        "name\x00with nul",
        start=NOW - S,
        end=NOW - S + MS,
        attrs={"aigw.route": "r\x00", "a\x00": "v\x00"},
        error="message\x00",
    )
    fine = maker.request(start=NOW - S, duration=MS)
    assert store.write([odd, *fine]) == 3
    [span] = store.get_trace(trace_id_of(odd))
    assert (span.name, span.status_message) == ("name\ufffdwith nul", "message\ufffd")
    # Attributes are JSON, which escapes NUL: they keep it exactly.
    assert span.attributes == {"aigw.route": "r\x00", "a\x00": "v\x00"}
    assert summary(store, trace_id_of(odd)).model == "r\ufffd"


# ---------------------------------------------------------------------------- schema


def test_ten_replicas_starting_on_an_empty_database_migrate_once(database_url):
    stores = [
        PostgresTraceStore.open(database_url, max_spans=100, max_age_seconds=DAY, replica=f"r{i}")
        for i in range(10)
    ]
    maker = SpanMaker()
    spans = [maker.span(f"s{i}", start=NOW - S, end=NOW - S + MS) for i in range(10)]

    def first_use(i: int) -> None:
        # Half of them write first, half query first: both paths migrate on first connect.
        if i % 2:
            stores[i].write([spans[i]])
        else:
            stores[i].list_traces()

    run_threads(10, first_use)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            f"SELECT component, version FROM {MIGRATIONS_TABLE} ORDER BY version"  # noqa: S608
        ).fetchall()
        assert rows == [("traces", v) for v in range(1, len(MIGRATIONS) + 1)]
        assert schema_version(conn, "traces") == len(MIGRATIONS)
    stores[0].write(spans)
    assert len(all_traces(stores[1])) == 10
    for store in stores:
        store.close()


def test_migrate_is_generic_incremental_and_transactional(database_url):
    first = "CREATE TABLE aigw_demo (id int PRIMARY KEY)"
    second = (
        "ALTER TABLE aigw_demo ADD COLUMN name text; "
        "CREATE INDEX aigw_demo_name ON aigw_demo (name)"
    )
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert schema_version(conn, "demo") == 0
        assert migrate(conn, "demo", [first]) == 1
        assert migrate(conn, "demo", [first]) == 0
        assert migrate(conn, "demo", [first, second]) == 1
        conn.execute("INSERT INTO aigw_demo VALUES (1, 'x')")
        # Components are independent: another one starts at 0 in the same table.
        assert migrate(conn, "other", ["CREATE TABLE aigw_other (x int)"]) == 1

        # A failing migration keeps nothing of the run, not even the statements before it.
        broken = [first, second, "CREATE TABLE aigw_third (x int); SELECT no_such_function()"]
        with pytest.raises(psycopg.errors.UndefinedFunction):
            migrate(conn, "demo", broken)
        assert schema_version(conn, "demo") == 2
        assert conn.execute("SELECT to_regclass('aigw_third')").fetchone() == (None,)

        with pytest.raises(SchemaTooNew, match=r"'demo' schema is at version 2"):
            migrate(conn, "demo", [first])
        assert not conn.info.transaction_status  # idle: nothing left open


def test_a_database_migrated_by_a_newer_gateway_is_refused(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        migrate(conn, "traces", [*MIGRATIONS, "CREATE TABLE aigw_future (x int)"])
    with (
        PostgresTraceStore.open(
            database_url, max_spans=100, max_age_seconds=DAY, replica="old"
        ) as store,
        pytest.raises(TraceStoreError, match=r"newer than this gateway") as info,
    ):
        store.list_traces()
    assert not isinstance(info.value, trace_store_postgres.TraceStoreUnavailable)


# ---------------------------------------------------------------------------- retention


def request_batches(maker: SpanMaker, n: int, first_start: int) -> list[list[ReadableSpan]]:
    """n requests (2 spans each), one a second from `first_start`, oldest first."""
    return [maker.request(start=first_start + i * S, duration=MS) for i in range(n)]


def test_retention_by_count_spans_both_writers(open_pg):
    a, b = open_pg("replica-a", max_spans=10), open_pg("replica-b", max_spans=10)
    old_a = request_batches(SpanMaker(replica="replica-a"), 4, NOW - 100 * S)
    new_b = request_batches(SpanMaker(replica="replica-b"), 4, NOW - 50 * S)
    for batch in old_a + new_b:
        (a if batch in old_a else b).write(batch)
    # 16 spans over a limit of 10: the three oldest traces go, whoever wrote them.
    a.enforce_retention()
    b.enforce_retention()
    kept = all_traces(a)
    assert stored_span_total(a) == 10
    assert [t.trace_id for t in kept] == [trace_id_of(x[0]) for x in reversed(old_a + new_b)][:5]
    assert [t.replica for t in kept] == ["replica-b"] * 4 + ["replica-a"]
    # Writes may have run retention themselves already; together the two evicted 6 spans.
    assert a.evicted + b.evicted == 6
    assert all_traces(b) == kept


def test_writes_apply_retention_from_either_writer(open_pg, monkeypatch):
    # Writes run retention at most once a second; make every write due so the test needn't wait.
    monkeypatch.setattr(trace_store_postgres, "_RETENTION_INTERVAL_NS", 0)
    a, b = open_pg("replica-a", max_spans=6), open_pg("replica-b", max_spans=6)
    batches = request_batches(SpanMaker(), 8, NOW - 100 * S)
    for i, batch in enumerate(batches):
        (a, b)[i % 2].write(batch)
        assert stored_span_total(a) <= 6
    assert [t.trace_id for t in all_traces(b)] == [trace_id_of(x[0]) for x in batches[:4:-1]]
    # Each replica counts its own evictions: both evicted some, 10 in all.
    assert (a.evicted > 0, b.evicted > 0, a.evicted + b.evicted) == (True, True, 10)


def test_retention_by_age_with_two_writers(open_pg):
    a, b = open_pg("replica-a", max_age=3600), open_pg("replica-b", max_age=3600)
    old_a = SpanMaker(replica="replica-a").request(start=NOW - 3 * 3600 * S, duration=S)
    old_b = SpanMaker(replica="replica-b").request(start=NOW - 2 * 3600 * S, duration=S)
    new_b = SpanMaker(replica="replica-b").request(start=NOW - 60 * S, duration=S)
    # Enforce explicitly: a write may or may not be the one that runs retention this second.
    a.write(old_a)
    b.write(old_b + new_b)
    evicted_by_writes = a.evicted + b.evicted
    assert b.enforce_retention() + evicted_by_writes == 4
    assert [t.trace_id for t in all_traces(a)] == [trace_id_of(new_b[0])]
    assert a.get_trace(trace_id_of(old_a[0])) == []
    # A later run, an hour on, takes the rest.
    assert a.enforce_retention(now_ns=NOW + 2 * 3600 * S) == 2
    assert all_traces(b) == []


def test_concurrent_retention_and_writes_keep_summaries_consistent(open_pg, monkeypatch):
    monkeypatch.setattr(trace_store_postgres, "_RETENTION_INTERVAL_NS", 0)
    stores = [open_pg(f"replica-{i}", max_spans=40) for i in range(3)]
    makers = [SpanMaker(replica=f"replica-{i}") for i in range(3)]

    def write(i: int) -> None:
        for k in range(30):
            stores[i].write(makers[i].request(start=NOW - (200 - k) * S - i * MS, duration=MS))
            if k % 10 == 9:
                stores[i].enforce_retention()

    run_threads(3, write)
    stores[0].enforce_retention()
    traces = all_traces(stores[0])
    assert stored_span_total(stores[0]) <= 40
    # Every summary matches its stored spans: no trace was left half-evicted.
    for t in traces:
        assert len(stores[1].get_trace(t.trace_id)) == t.span_count == 2
