"""Call records from serving processes to the telemetry process, over its private socket.

`Intake` is the telemetry process's end: `/aigw.internal.Telemetry/Deliver` takes one
encoded batch (`call_records.encode_batch`), hands its records to the telemetry side and
answers once they are there. `/aigw.internal.Telemetry/Follow` is a stream each serving
process keeps open (`DeliveryRequests`): the telemetry process sends on it when it needs every
call recorded so far, before a trace query or an export switch (`TelemetryIngest.settle`), and
the serving process delivers at once. Nothing crosses while all is idle.

`RecordsToTelemetry` is a serving process's end: the `deliver` of its `BatchWorker`. While
the telemetry process is away (restarting), a delivery raises
`DeliveryDeferred("telemetry_unavailable")`: the batch is kept and retried, and what the full
queue drops meanwhile is counted under that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping

import grpc

from gateway.telemetry.batch_worker import BatchWorker, DeliveryDeferred
from gateway.telemetry.call_records import BadBatch, decode_batch, encode_batch
from gateway.telemetry.pipeline import Telemetry

__all__ = ["DELIVER", "DeliveryRequests", "Intake", "RecordsToTelemetry", "socket_target"]

_log = logging.getLogger(__name__)

_SERVICE = "aigw.internal.Telemetry"
DELIVER = f"/{_SERVICE}/Deliver"
FOLLOW = f"/{_SERVICE}/Follow"
_FOLLOW_AGAIN_SECONDS = 0.2
_DELIVER_TIMEOUT = 10.0
# Records cross in batches of up to 1024 (a few hundred KiB); leave room for long content.
MAX_BATCH_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_BATCH_BYTES),
    ("grpc.max_send_message_length", MAX_BATCH_BYTES),
    # A restarted telemetry process is back within a second or two, and a connection attempt
    # to a local socket costs next to nothing: try often, so nothing waits on a backoff.
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
)


def socket_target(path: str) -> str:
    return f"unix:{path}"


class Intake:
    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry
        self._loop: asyncio.AbstractEventLoop | None = None
        self._followers: dict[str, asyncio.Event] = {}
        self._last_seq: dict[str, int] = {}
        self._unfollowed = asyncio.Event()  # set while no serving process follows
        self._unfollowed.set()
        telemetry.ingest.set_delivery_request(self._ask_to_deliver)

    def add_to(self, server: grpc.aio.Server) -> None:
        handlers = {  # raw bytes both ways
            "Deliver": grpc.unary_unary_rpc_method_handler(self._deliver),
            "Follow": grpc.unary_stream_rpc_method_handler(self._follow),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))

    async def followers_gone(self, timeout: float) -> None:
        """Return once no serving process follows (they have all exited), or at `timeout`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._unfollowed.wait(), timeout)

    def _ask_to_deliver(self) -> None:
        """From any thread: every follower delivers what it holds, now."""
        loop = self._loop
        if loop is None:
            return
        for asked in list(self._followers.values()):
            loop.call_soon_threadsafe(asked.set)

    async def _follow(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        source = request.decode(errors="replace")
        self._loop = asyncio.get_running_loop()
        asked = asyncio.Event()
        self._followers[source] = asked
        self._unfollowed.clear()
        self._telemetry.ingest.follow(source)
        try:
            while True:
                await asked.wait()
                asked.clear()
                yield b""
        finally:
            if self._followers.get(source) is asked:
                del self._followers[source]
                self._telemetry.ingest.unfollow(source)
            if not self._followers:
                self._unfollowed.set()

    async def _deliver(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            batch = decode_batch(data)
        except BadBatch as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        telemetry = self._telemetry
        if batch.seq:
            if batch.seq <= self._last_seq.get(batch.source, 0):
                return b""  # a re-send of a batch already taken (its answer was lost)
            # Noted before taking: a re-send arriving while this one is taken is skipped.
            self._last_seq[batch.source] = batch.seq
        if batch.records:
            # Off the loop: the console and admin calls share it.
            await asyncio.to_thread(telemetry.ingest.take, batch.records)
        if batch.source:
            telemetry.ingest.report(batch.source, batch.active, batch.dropped)
            telemetry.ingest.delivered(batch.source, batch.sent_at)
        for source in batch.gone:
            telemetry.ingest.forget(source)
        if batch.restarts:
            telemetry.restarts = {(k,): n for k, n in batch.restarts.items()}
        return b""


class RecordsToTelemetry:
    """A serving process's delivery of record batches: `source` names it in the counts."""

    def __init__(
        self,
        socket_path: str,
        source: str,
        active: Callable[[], Mapping[str, int]],
        dropped: Callable[[], Mapping[str, int]],
        cut_at: Callable[[], float],
    ) -> None:
        self._source = source
        self._cut_at = cut_at
        self._seq = 0
        self._last: list[tuple[object, ...]] | None = None
        self._active = active
        self._dropped = dropped
        self._channel = grpc.insecure_channel(socket_target(socket_path), CHANNEL_OPTIONS)
        self._call = self._channel.unary_unary(DELIVER)

    def deliver(self, records: list[tuple[object, ...]]) -> None:
        if records is not self._last:  # BatchWorker re-sends the very list it sent
            self._seq += 1
            self._last = records
        data = encode_batch(
            self._source,
            self._cut_at(),
            dict(self._active()),
            dict(self._dropped()),
            records,
            seq=self._seq,
        )
        try:
            self._call(data, timeout=_DELIVER_TIMEOUT, wait_for_ready=False)
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, grpc.Call) else None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise DeliveryDeferred("telemetry_unavailable", str(code)) from None
            raise

    def close(self) -> None:
        self._channel.close()


class DeliveryRequests:
    """A serving process's end of Follow: each request from the telemetry process wakes
    `records` (a `BatchWorker`), which then delivers at once. Followed again whenever the
    telemetry process comes back."""

    def __init__(
        self, socket_path: str, source: str, records: BatchWorker[tuple[object, ...]]
    ) -> None:
        self._socket_path = socket_path
        self._source = source
        self._records = records
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        async with grpc.aio.insecure_channel(
            socket_target(self._socket_path), CHANNEL_OPTIONS
        ) as channel:
            follow = channel.unary_stream(FOLLOW)
            while True:
                try:
                    # Waits for the socket to answer rather than failing at once meanwhile.
                    async for _ in follow(self._source.encode(), wait_for_ready=True):
                        self._records.wake()
                except grpc.aio.AioRpcError:
                    pass  # the telemetry process is away: follow it again when it is back
                await asyncio.sleep(_FOLLOW_AGAIN_SECONDS)

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
