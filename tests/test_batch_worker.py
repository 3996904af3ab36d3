"""BatchWorker, the one batch mechanism under call records, the trace store and span export."""

from __future__ import annotations

import threading
import time

import pytest

from gateway.telemetry.batch_worker import BatchWorker, DeliveryDeferred


class Receiver:
    """Takes batches; can be held at a gate, made to defer, or made to fail."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.away = False
        self.broken = False
        self.attempts = 0

    def deliver(self, batch: list[int]) -> None:
        self.attempts += 1
        self.entered.set()
        assert self.gate.wait(10)
        if self.away:
            raise DeliveryDeferred("receiver_away")
        if self.broken:
            raise RuntimeError("receiver broken")
        self.batches.append(batch)

    @property
    def items(self) -> list[int]:
        return [i for b in self.batches for i in b]


def test_lifecycle_is_safe_before_start_and_twice() -> None:
    worker: BatchWorker[int] = BatchWorker("t", Receiver().deliver)
    assert worker.flush(0.1)  # nothing put: nothing to wait for
    worker.shutdown(time.monotonic() + 1)
    worker.shutdown(time.monotonic() + 1)
    worker.start()  # after shutdown: stays stopped
    assert worker.thread is None
    assert worker.put(1) is False
    assert worker.dropped == {"shutdown": 1}


def test_items_put_before_start_are_counted_at_shutdown_when_never_started() -> None:
    worker: BatchWorker[int] = BatchWorker("t", Receiver().deliver)
    assert worker.put(1)
    assert worker.put(2)
    assert worker.flush(0.05) is False  # no thread to deliver them
    worker.shutdown(time.monotonic() + 0.1)
    assert worker.dropped == {"shutdown": 2}
    assert worker.done == worker.accepted == 2


def test_batches_are_cut_by_size_and_time_in_order() -> None:
    receiver = Receiver()
    worker: BatchWorker[int] = BatchWorker("t", receiver.deliver, max_batch=4, interval=0.02)
    worker.start()
    for i in range(10):
        worker.put(i)
    assert worker.flush(5)
    assert receiver.items == list(range(10))
    assert all(len(b) <= 4 for b in receiver.batches)
    worker.put(10)  # one alone: delivered within the interval, without a flush
    deadline = time.monotonic() + 5
    while receiver.items[-1:] != [10]:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    worker.shutdown(time.monotonic() + 1)


def test_a_full_queue_drops_the_new_item_and_says_why() -> None:
    receiver = Receiver()
    receiver.gate.clear()
    worker: BatchWorker[int] = BatchWorker("t", receiver.deliver, capacity=3, max_batch=1)
    worker.start()
    worker.put(0)
    assert receiver.entered.wait(5)  # 0 is being delivered, held at the gate
    assert [worker.put(i) for i in (1, 2, 3, 4)] == [True, True, True, False]
    assert worker.dropped == {"queue_full": 1}
    receiver.gate.set()
    assert worker.flush(5)
    assert receiver.items == [0, 1, 2, 3]
    worker.shutdown(time.monotonic() + 1)


def test_a_deferred_batch_is_kept_retried_and_drops_meanwhile_carry_the_reason() -> None:
    receiver = Receiver()
    receiver.away = True
    worker: BatchWorker[int] = BatchWorker(
        "t", receiver.deliver, capacity=2, max_batch=1, interval=0.01, retry_first=0.01
    )
    worker.start()
    worker.put(0)
    deadline = time.monotonic() + 5
    while receiver.attempts < 3:  # the same batch, again and again
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert [worker.put(i) for i in (1, 2, 3)] == [True, True, False]
    assert worker.dropped == {"receiver_away": 1}
    assert worker.flush(0.05) is False
    receiver.away = False
    worker.wake()  # the receiver is back: the pause is cut short
    assert worker.flush(5)
    assert receiver.items == [0, 1, 2]
    worker.put(4)
    worker.shutdown(time.monotonic() + 1)
    assert worker.dropped == {"receiver_away": 1}  # a full queue is queue_full again later
    assert receiver.items == [0, 1, 2, 4]


def test_a_failing_delivery_loses_that_batch_only_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver = Receiver()
    receiver.broken = True
    worker: BatchWorker[int] = BatchWorker("t", receiver.deliver, max_batch=1)
    worker.start()
    worker.put(0)
    worker.put(1)
    assert worker.flush(5)  # done: failed counts as done
    receiver.broken = False
    worker.put(2)
    assert worker.flush(5)
    worker.shutdown(time.monotonic() + 1)
    assert worker.dropped == {"failed": 2}
    assert receiver.items == [2]
    assert len([r for r in caplog.records if "receiver broken" in r.getMessage()]) == 1


def test_shutdown_delivers_what_is_queued_until_the_deadline_then_counts_the_rest() -> None:
    receiver = Receiver()
    receiver.away = True
    worker: BatchWorker[int] = BatchWorker(
        "t", receiver.deliver, max_batch=2, interval=0.01, retry_first=0.01
    )
    worker.start()
    for i in range(5):
        worker.put(i)
    started = time.monotonic()
    worker.shutdown(started + 0.2)
    assert time.monotonic() - started < 2.0
    assert worker.thread is not None
    assert not worker.thread.is_alive()
    assert worker.dropped == {"shutdown": 5}
    assert worker.done == worker.accepted == 5


def test_wake_delivers_an_empty_batch_and_stamps_the_cut() -> None:
    receiver = Receiver()
    worker: BatchWorker[int] = BatchWorker("t", receiver.deliver, interval=60)
    worker.start()
    before = time.monotonic()
    worker.wake()
    deadline = time.monotonic() + 5
    while not receiver.batches:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert receiver.batches == [[]]
    assert worker.cut_at >= before
    worker.shutdown(time.monotonic() + 1)


def test_only_the_batch_that_empties_the_queue_moves_the_cut() -> None:
    """A receiver reading `cut_at` as "everything put before it has arrived" must not be
    told so by the first batch of a backlog."""
    receiver = Receiver()
    receiver.away = True
    cuts: list[float] = []  # the cut each delivered batch carried

    def deliver(batch: list[int]) -> None:
        receiver.deliver(batch)
        if batch:  # the poke's own empty batch follows; it carries a fresh cut anyway
            cuts.append(worker.cut_at)

    worker: BatchWorker[int] = BatchWorker("t", deliver, max_batch=3)
    worker.start()
    for i in range(7):
        worker.put(i)
    deadline = time.monotonic() + 5
    while receiver.attempts < 1:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    since = time.monotonic()
    receiver.away = False
    worker.wake()
    assert worker.flush(5)
    assert [b for b in receiver.batches if b] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [c >= since for c in cuts] == [False, False, True]
    worker.shutdown(time.monotonic() + 1)
