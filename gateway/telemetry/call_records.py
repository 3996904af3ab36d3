"""The compact records the request path hands to the telemetry side, and their wire form.

A call leaves two kinds of record, plain tuples of plain values so that they cost nothing to
build and cross a process boundary as they are:

    (SPAN, name, kind, trace_id, span_id, parent_id, remote_parent, trace_state,
     start_ns, end_ns, attributes, status_code, status_message)
    (MEASURE, instrument, value, attributes)

`kind` and `status_code` are the OpenTelemetry enums' values, `parent_id` 0 for a root span,
`trace_state` the W3C header form ("" for none), `instrument` an index into `MEASURED`.
Attribute dicts are usually shared between records (one per route and status, built once):
the wire form keeps them shared.

On the wire (a serving process to the telemetry process) a batch is one `marshal` dump of
`(WIRE_VERSION, source, sent_at, active, dropped, records, restarts, gone, seq)`: `source` names
the sending process, `sent_at` the `time.monotonic()` (one clock for every process of the
machine) at which the batch was cut, `active` its in-flight calls by method, `dropped` its
cumulative record drops by reason; from the supervisor only, `restarts` (cumulative, by
process kind) and `gone` (sources that died: their calls are no longer in flight); `seq`
numbers a source's batches from 1, the same on a re-send, so a batch delivered twice (its
answer lost) is taken once.

marshal because it is the fastest codec in the standard library for exactly these types and,
unlike pickle, cannot run code while loading (decisions.md).
"""

from __future__ import annotations

import marshal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from gateway.telemetry.catalog import CATALOG, Instrument

__all__ = [
    "MEASURE",
    "MEASURED",
    "SPAN",
    "BadBatch",
    "WireBatch",
    "decode_batch",
    "encode_batch",
]

SPAN: Final = 0
MEASURE: Final = 1

# The synchronous instruments a call records, by index.
MEASURED: Final[tuple[Instrument, ...]] = (
    CATALOG.RPC_DURATION,
    CATALOG.GENAI_DURATION,
    CATALOG.TOKEN_USAGE,
    CATALOG.TIME_TO_FIRST_TOKEN,
    CATALOG.TIME_PER_OUTPUT_TOKEN,
    CATALOG.COST,
)

WIRE_VERSION: Final = 1
_MARSHAL_VERSION: Final = 4  # shares repeated objects (the attribute dicts)


class BadBatch(ValueError):
    """Bytes that are not a batch of this version."""


@dataclass(frozen=True, slots=True)
class WireBatch:
    source: str
    sent_at: float
    active: Mapping[str, int]
    dropped: Mapping[str, int]
    records: Sequence[tuple[object, ...]]
    restarts: Mapping[str, int]
    gone: Sequence[str]
    seq: int


def encode_batch(
    source: str,
    sent_at: float,
    active: Mapping[str, int],
    dropped: Mapping[str, int],
    records: Sequence[tuple[object, ...]],
    restarts: Mapping[str, int] | None = None,
    gone: Sequence[str] = (),
    seq: int = 0,
) -> bytes:
    return marshal.dumps(
        (
            WIRE_VERSION,
            source,
            sent_at,
            dict(active),
            dict(dropped),
            list(records),
            dict(restarts or {}),
            list(gone),
            seq,
        ),
        _MARSHAL_VERSION,
    )


def decode_batch(data: bytes) -> WireBatch:
    try:
        fields = marshal.loads(data)  # noqa: S302 - see above
        version, source, sent_at, active, dropped, records, restarts, gone, seq = fields
    except (EOFError, ValueError, TypeError) as e:
        raise BadBatch(f"not a record batch: {e}") from None
    if version != WIRE_VERSION:
        raise BadBatch(f"record batch version {version!r}, expected {WIRE_VERSION}")
    if not (
        isinstance(source, str)
        and isinstance(sent_at, float)
        and isinstance(active, dict)
        and isinstance(dropped, dict)
        and isinstance(records, list)
        and isinstance(restarts, dict)
        and isinstance(gone, list)
        and isinstance(seq, int)
    ):
        raise BadBatch("record batch has the wrong shape")
    return WireBatch(source, sent_at, active, dropped, records, restarts, gone, seq)
