"""The telemetry process's record intake, on a real unix socket, fed by the serving side's
delivery code."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import grpc

from gateway.processes.intake import Intake, RecordsToTelemetry, socket_target
from gateway.server import Gateway
from gateway.telemetry.call_records import MEASURE, MEASURED
from gateway.telemetry.catalog import CATALOG

_COST = MEASURED.index(CATALOG.COST)
_ATTRS = {"gen_ai.provider.name": "echo", "gen_ai.request.model": "m", "aigw.route": "r"}


async def _cost_total(gw: Gateway) -> float:
    assert gw.telemetry is not None
    value = await asyncio.to_thread(
        lambda: gw.telemetry.registry.get_sample_value(  # type: ignore[union-attr]
            "aigw_usage_cost_USD_total",
            {"gen_ai_provider_name": "echo", "gen_ai_request_model": "m", "aigw_route": "r"},
        )
    )
    return float(value or 0.0)


async def test_a_batch_sent_again_is_taken_once(gateway: Gateway) -> None:
    """A serving process re-sends a batch whose answer it did not get; the second copy must
    not count its measurements again."""
    assert gateway.telemetry is not None
    with tempfile.TemporaryDirectory(prefix="aigw-t-") as tmp:
        path = str(Path(tmp) / "t.sock")
        server = grpc.aio.server()
        Intake(gateway.telemetry).add_to(server)
        server.add_insecure_port(socket_target(path))
        await server.start()
        sender = RecordsToTelemetry(
            path, "worker-0-1", active=dict, dropped=dict, cut_at=lambda: 1.0
        )
        try:
            batch: list[tuple[object, ...]] = [(MEASURE, _COST, 0.25, _ATTRS)]
            await asyncio.to_thread(sender.deliver, batch)
            await asyncio.to_thread(sender.deliver, batch)  # the same batch, sent again
            await asyncio.to_thread(sender.deliver, [(MEASURE, _COST, 0.5, _ATTRS)])
            assert await _cost_total(gateway) == 0.75
        finally:
            sender.close()
            await server.stop(None)
