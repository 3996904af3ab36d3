"""`BatchWorker`: a bounded queue drained in batches by one thread, for the request path.

`put` is what a request pays: an uncontended lock, a length check and a deque append, no
wake-up (the worker wakes on its own every `interval`, or once when a full batch is waiting).
It never blocks or raises; a full queue drops the new item and counts it by reason. The worker hands
batches of up to `max_batch` items to `deliver`:

- `deliver` returns: the batch is done;
- `deliver` raises `DeliveryDeferred(reason)`: the receiving side is away (the telemetry
  process is restarting, a database is down); the batch is kept and retried after a pause
  that doubles from `retry_first` to `retry_max` (`wake()` and shutdown cut a pause short),
  and while that lasts, drops caused by the full queue count under `reason`;
- `deliver` raises anything else: the batch is lost, counted as `failed`, the error logged
  once per distinct message.

`wake()` runs the worker at once, and delivers even an empty batch: the receiver learns that
everything put before that moment has been sent (a telemetry process asks serving processes
so before a trace query; the span exporter retires a switched-off exporter that way). `cut_at`
is the `time.monotonic()` at which the batch being delivered was taken: everything put before it
is in that batch or an earlier one.

`flush(timeout)` waits until every item put before it is done; `shutdown(deadline)` delivers
what is queued until `deadline` (a `time.monotonic()` value, shared with the caller's other
shutdown steps), then counts what is left as `shutdown` and stops. Both are safe before
`start` and twice.

`put`, `flush`, `wake` and `shutdown` may be called from any thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Final, Generic, TypeVar

__all__ = ["BatchWorker", "DeliveryDeferred"]

_log = logging.getLogger(__name__)

_T = TypeVar("_T")
_MAX_REMEMBERED_ERRORS: Final = 32


class DeliveryDeferred(Exception):
    """The receiver cannot take the batch now; keep it and retry."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


class BatchWorker(Generic[_T]):
    def __init__(
        self,
        name: str,
        deliver: Callable[[list[_T]], None],
        *,
        capacity: int = 50_000,
        max_batch: int = 1024,
        interval: float = 0.05,
        retry_first: float = 0.05,
        retry_max: float = 2.0,
    ) -> None:
        if capacity < 1 or max_batch < 1 or not interval > 0:
            raise ValueError("capacity and max_batch must be at least 1, interval positive")
        self._name = name
        self._deliver = deliver
        self._capacity = capacity
        self._max_batch = max_batch
        self._interval = interval
        self._pokes = 0  # wake() calls so far; a change is a request to deliver now
        self._touched = False
        self._retry_first = retry_first
        self._retry_max = retry_max
        self.cut_at = 0.0
        self._queue: deque[_T] = deque()
        self._wake = threading.Event()
        self._cond = threading.Condition()
        self._put_lock = threading.Lock()
        self._put = 0  # items accepted (the producer's count)
        self._done = 0  # items delivered, failed or dropped after acceptance (the worker's)
        self._full_reason = "queue_full"
        self.dropped: Counter[str] = Counter()
        self._logged: set[str] = set()
        self._stopping = False
        self._deadline = 0.0
        self._thread: threading.Thread | None = None

    # --- the request path ----------------------------------------------------------------

    def put(self, item: _T) -> bool:
        """Queue `item`; False when it was dropped (and counted)."""
        queue = self._queue
        # A lock, uncontended in a serving process (one producer): the telemetry side's
        # processors are fed by several intake threads at once, and the counts must add up.
        with self._put_lock:
            if len(queue) >= self._capacity or self._stopping:
                self.dropped["shutdown" if self._stopping else self._full_reason] += 1
                return False
            queue.append(item)
            self._put += 1
            full = len(queue) == self._max_batch
        if full:
            self._wake.set()
        return True

    def wake(self) -> None:
        """Deliver now rather than at the next interval, an empty batch if nothing is queued."""
        self._pokes += 1
        self._wake.set()

    def touch(self) -> None:
        """Deliver at the next interval even if nothing is queued (what rides along with every
        batch, such as in-flight counts, has changed). Costs the caller an attribute store."""
        self._touched = True

    @property
    def pending(self) -> int:
        """Items queued, not yet taken into a batch."""
        return len(self._queue)

    @property
    def accepted(self) -> int:
        """Items taken into the queue so far (not dropped at `put`)."""
        return self._put

    @property
    def done(self) -> int:
        """Accepted items finished (delivered, failed or dropped at shutdown), in queue order:
        during a delivery, the position of the batch's first item."""
        return self._done

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None or self._stopping:
            return
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def flush(self, timeout: float) -> bool:
        """True when everything put before the call is done within `timeout` seconds."""
        deadline = time.monotonic() + max(timeout, 0.0)
        target = self._put
        self._wake.set()
        with self._cond:
            while self._done < target:
                left = deadline - time.monotonic()
                thread = self._thread
                if left <= 0 or thread is None or not thread.is_alive():
                    return self._done >= target
                self._cond.wait(min(left, 0.05))
                self._wake.set()
        return True

    def shutdown(self, deadline: float) -> None:
        if self._stopping:
            return
        self._deadline = deadline
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            # A delivery in progress gets a little past the deadline to finish on its own.
            thread.join(max(deadline - time.monotonic(), 0.0) + 1.0)
        left = len(self._queue)
        if left and (thread is None or not thread.is_alive()):
            self._queue.clear()
            self._count_done(left, "shutdown")

    # --- the worker ----------------------------------------------------------------------

    def _run(self) -> None:
        queue = self._queue
        seen_pokes = 0
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            # Read before looking at the queue: a poke or touch that lands later is seen on
            # the next turn (a poke sets the event again).
            pokes = self._pokes
            asked, seen_pokes = pokes != seen_pokes, pokes
            touched, self._touched = self._touched, False
            if (asked or touched) and not queue:
                self.cut_at = time.monotonic()
                self._deliver_one([])
            while queue:
                if self._stopping and time.monotonic() >= self._deadline:
                    left = len(queue)  # out of drain time: lost, and counted
                    queue.clear()
                    self._count_done(left, "shutdown")
                    break
                cut = time.monotonic()
                take = min(len(queue), self._max_batch)
                batch = [queue.popleft() for _ in range(take)]
                if not queue:
                    # Only a batch that empties the queue holds everything put before `cut`;
                    # earlier batches of a backlog keep the previous cut.
                    self.cut_at = cut
                self._deliver_one(batch)
            if self._stopping:
                return

    def _deliver_one(self, batch: list[_T]) -> None:
        retry_in = self._retry_first
        while True:
            try:
                self._deliver(batch)
            except DeliveryDeferred as e:
                self._full_reason = e.reason
                if self._stopping and time.monotonic() >= self._deadline:
                    self._count_done(len(batch), "shutdown")
                    return
                if self._stopping:
                    time.sleep(min(retry_in, max(self._deadline - time.monotonic(), 0.0)))
                elif self._pause(retry_in):
                    # Asked for our records: the receiver is back; start the backoff over.
                    retry_in = self._retry_first
                    continue
                retry_in = min(retry_in * 2, self._retry_max)
                continue
            except Exception as e:  # a bug in delivery must not stop the worker
                self._log_once(e, len(batch))
                self._count_done(len(batch), "failed")
                return
            self._full_reason = "queue_full"
            self._count_done(len(batch), None)
            return

    def _pause(self, seconds: float) -> bool:
        """Wait before a retry; cut short by `wake()` (True) or shutdown. Other wake-ups (a
        flush waiting, a full batch) do not shorten it: the backoff is the receiver's due."""
        pokes = self._pokes
        until = time.monotonic() + seconds
        while not self._stopping:
            left = until - time.monotonic()
            if left <= 0:
                return False
            if self._wake.wait(left):
                self._wake.clear()
                if self._pokes != pokes:
                    self._wake.set()  # the turn after this delivery still owes the poke
                    return True
        return False

    def _count_done(self, n: int, drop_reason: str | None) -> None:
        with self._cond:
            if drop_reason is not None:
                self.dropped[drop_reason] += n
            self._done += n
            self._cond.notify_all()

    def _log_once(self, error: Exception, lost: int) -> None:
        key = f"{type(error).__name__}: {error}"
        if key in self._logged:
            return
        if len(self._logged) < _MAX_REMEMBERED_ERRORS:
            self._logged.add(key)
        _log.error(
            "%s: a batch of %d record(s) was lost: %s", self._name, lost, key, exc_info=error
        )
