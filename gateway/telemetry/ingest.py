"""The telemetry side's intake: batches of call records become SDK spans and measurements.

Serving processes (or, in one process, the gateway's own record worker) deliver batches of the
records `call_records.py` describes. Each `SPAN` record becomes the SDK's `ReadableSpan` —
the object every span processor, the trace store and the OTLP exporters take — with this
gateway's resource and instrumentation scope, and is handed to the span processors; each
`MEASURE` record is recorded on its instrument. In-flight counts and record drops are kept
per source and summed for `/metrics`, so N serving processes show as one gateway.

Read your own writes across processes: each batch is stamped with the moment it was cut, and
serving processes *follow* the telemetry side (a stream on which it can ask them to deliver at
once). `settle(t)` asks every follower to deliver, then waits until each has delivered a batch
cut after `t` (an empty one if it had nothing): then every call any of them finished before
`t` is in the span processors. It waits (within its timeout) for as many followers as there
are serving processes, so a telemetry process that has just restarted waits for them to
follow again; a serving process that died is forgotten when the supervisor says so, and its
replacement is waited for.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SynchronousMultiSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from gateway import __version__
from gateway.telemetry.call_records import SPAN
from gateway.telemetry.metrics import MetricInstruments

__all__ = ["SCOPE", "TelemetryIngest"]

SCOPE = InstrumentationScope("aigw", __version__)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_ASK_AGAIN_SECONDS = 0.1
_KINDS = {k.value: k for k in SpanKind}
_STATUS = {c.value: Status(c) for c in StatusCode}


class TelemetryIngest:
    def __init__(
        self,
        resource: Resource,
        processors: SynchronousMultiSpanProcessor,
        instruments: MetricInstruments,
    ) -> None:
        self._resource = resource
        self._processors = processors
        self._instruments = instruments
        self._lock = threading.Lock()
        self._heard = threading.Condition(self._lock)
        self._cut_at: dict[str, float] = {}
        self._followers: set[str] = set()
        self._expected_followers = 0
        self._ask_to_deliver: Callable[[], None] = lambda: None
        self._active: dict[str, Mapping[str, int]] = {}
        self._dropped: dict[str, Mapping[str, int]] = {}
        self._trace_states: dict[str, TraceState] = {}

    def take(self, records: Sequence[tuple[object, ...]]) -> None:
        """Build and hand on one batch. Runs on the delivering thread, never a request's."""
        on_end = self._processors.on_end
        record = self._instruments.record
        for r in records:
            if r[0] == SPAN:
                on_end(self._span(r))
            else:
                record(r[1], r[2], r[3])  # type: ignore[arg-type]

    def _span(self, r: tuple[object, ...]) -> ReadableSpan:
        _, name, kind, trace_id, span_id, parent_id, remote, state, start, end, attrs, code, msg = r
        trace_state = self._trace_state(state) if state else None  # type: ignore[arg-type]
        parent = (
            SpanContext(trace_id, parent_id, bool(remote), _SAMPLED, trace_state)  # type: ignore[arg-type]
            if parent_id
            else None
        )
        status = Status(StatusCode.ERROR, msg) if msg else _STATUS[code]  # type: ignore[arg-type,index]
        return ReadableSpan(
            name=name,  # type: ignore[arg-type]
            context=SpanContext(trace_id, span_id, False, _SAMPLED, trace_state),  # type: ignore[arg-type]
            parent=parent,
            resource=self._resource,
            attributes=attrs,  # type: ignore[arg-type]
            kind=_KINDS[kind],  # type: ignore[index]
            instrumentation_scope=SCOPE,
            status=status,
            start_time=start,  # type: ignore[arg-type]
            end_time=end,  # type: ignore[arg-type]
        )

    def _trace_state(self, header: str) -> TraceState:
        # A caller's tracestate repeats on every span of its trace: parse each one once.
        state = self._trace_states.get(header)
        if state is None:
            state = TraceState.from_header([header])
            if len(self._trace_states) < 1024:
                self._trace_states[header] = state
        return state

    # --- per-source state: in-flight calls and record drops ----------------------------------

    def report(self, source: str, active: Mapping[str, int], dropped: Mapping[str, int]) -> None:
        """What `source` says of itself now: in-flight calls, cumulative record drops.

        In one process these are the live mappings themselves, read at each collection.
        """
        with self._lock:
            self._active[source] = active
            self._dropped[source] = dropped

    def delivered(self, source: str, cut_at: float) -> None:
        """`source`'s batch cut at `cut_at` has been taken."""
        with self._lock:
            self._cut_at[source] = max(cut_at, self._cut_at.get(source, 0.0))
            self._heard.notify_all()

    def set_delivery_request(self, ask: Callable[[], None]) -> None:
        """How to ask every follower to deliver now (thread-safe; set by the intake)."""
        self._ask_to_deliver = ask

    def expect_followers(self, n: int) -> None:
        """`n` serving processes exist: `settle` waits (within its timeout) until that many
        follow — a restarted telemetry process has heard from none of them yet."""
        self._expected_followers = n

    def follow(self, source: str) -> None:
        with self._lock:
            self._followers.add(source)
            self._heard.notify_all()

    def unfollow(self, source: str) -> None:
        with self._lock:
            self._followers.discard(source)
            self._heard.notify_all()

    def settle(self, since: float, timeout: float) -> bool:
        """Wait until every follower has delivered what it recorded before `since`."""
        deadline = time.monotonic() + timeout
        asked_at = -1.0
        with self._lock:
            while len(self._followers) < self._expected_followers or any(
                self._cut_at.get(s, 0.0) < since for s in self._followers
            ):
                now = time.monotonic()
                if now - asked_at >= _ASK_AGAIN_SECONDS:
                    # Asked again while waiting: a delivery can fail while the telemetry
                    # process is new (its socket still reconnecting) and be held for a retry.
                    asked_at = now
                    self._lock.release()
                    try:
                        self._ask_to_deliver()
                    finally:
                        self._lock.acquire()
                    continue
                left = deadline - now
                if left <= 0:
                    return False
                self._heard.wait(min(left, asked_at + _ASK_AGAIN_SECONDS - now))
        return True

    def forget(self, source: str) -> None:
        """`source` is gone: its calls are no longer in flight; its drops stay counted."""
        with self._lock:
            self._active.pop(source, None)
            self._cut_at.pop(source, None)
            self._followers.discard(source)
            self._heard.notify_all()

    def active(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        with self._lock:
            for counts in self._active.values():
                total.update(dict(counts))  # a copy: a live mapping may change meanwhile
        return dict(total)

    def dropped(self) -> dict[tuple[str, ...], int]:
        total: Counter[str] = Counter()
        with self._lock:
            for counts in self._dropped.values():
                total.update(dict(counts))
        return {(reason,): n for reason, n in total.items()}
