"""The wire form of call records between serving processes and the telemetry process."""

from __future__ import annotations

import marshal

import pytest

from gateway.telemetry.call_records import (
    MEASURE,
    SPAN,
    WIRE_VERSION,
    BadBatch,
    decode_batch,
    encode_batch,
)


def test_a_batch_round_trips_and_shared_attribute_dicts_cross_once() -> None:
    shared = {"gen_ai.operation.name": "chat", "aigw.route": "echo", "x": "y" * 1000}
    span = (SPAN, "chat echo-1", 2, 2**127 + 5, 2**63 + 1, 7, True, "k=v", 1, 2, {"a": 1}, 0, "")
    records = [span, *((MEASURE, 1, 0.5, shared) for _ in range(100))]
    data = encode_batch(
        "worker-0-1", 12.5, {"m": 1}, {"queue_full": 2}, records, {"w": 1}, ["g"], seq=3
    )

    # 100 references to one dict: its 1 KB of text is written once, not 100 times.
    def copy() -> dict[str, str]:  # equal, and made of distinct objects
        return {"".join(list(k)): "".join(list(v)) for k, v in shared.items()}

    copies = [span, *((MEASURE, 1, 0.5, copy()) for _ in range(100))]
    assert len(data) * 10 < len(encode_batch("worker-0-1", 12.5, {}, {}, copies))
    batch = decode_batch(data)
    assert (batch.source, batch.sent_at, batch.active, batch.dropped) == (
        "worker-0-1",
        12.5,
        {"m": 1},
        {"queue_full": 2},
    )
    assert batch.records[0] == span
    assert batch.records[1:] == [(MEASURE, 1, 0.5, shared)] * 100
    assert (batch.restarts, batch.gone, batch.seq) == ({"w": 1}, ["g"], 3)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00garbage\xff" * 10,
        marshal.dumps(42),
        marshal.dumps((WIRE_VERSION + 1, "s", 1.0, {}, {}, [], {}, [], 0)),
        marshal.dumps((WIRE_VERSION, 5, 1.0, {}, {}, [], {}, [], 0)),
        marshal.dumps((WIRE_VERSION, "s", 1.0, {}, {}, "not a list", {}, [], 0)),
    ],
    ids=["empty", "garbage", "not-a-tuple", "other-version", "bad-source", "bad-records"],
)
def test_what_is_not_a_batch_is_refused_with_a_reason(data: bytes) -> None:
    with pytest.raises(BadBatch):
        decode_batch(data)
