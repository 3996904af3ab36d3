"""The `aigw.v1.AdminService` servicer: trace store queries and the OTLP export config."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import grpc
from aigw.v1 import admin_pb2, admin_pb2_grpc, otel_config_pb2, traces_pb2
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from admin.config_manager import OtelConfigManager, StaleVersion
from admin.config_store import ConfigStoreError
from admin.otel_config import InvalidConfig, to_proto
from gateway.telemetry.export_stats import ExportStats
from gateway.telemetry.pipeline import Telemetry
from gateway.telemetry.trace_store import StoredSpan, TraceStore, TraceSummary

__all__ = ["AdminServicer"]

_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_STATUS_FILTER = {
    traces_pb2.TRACE_STATUS_FILTER_UNSPECIFIED: "",
    traces_pb2.TRACE_STATUS_FILTER_OK: "OK",
    traces_pb2.TRACE_STATUS_FILTER_ERROR: "ERROR",
}
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 50


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def _duration(ns: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def _struct(attributes: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update({k: list(v) if isinstance(v, tuple) else v for k, v in attributes.items()})
    return s


def _summary(t: TraceSummary) -> traces_pb2.TraceSummary:
    return traces_pb2.TraceSummary(
        trace_id=t.trace_id,
        root_span_name=t.root_span_name,
        model=t.model,
        status=t.status,
        rpc_status_code=t.rpc_status_code,
        start_time=_timestamp(t.start_ns),
        duration=_duration(t.duration_ns),
        span_count=t.span_count,
    )


def _span(s: StoredSpan) -> traces_pb2.Span:
    return traces_pb2.Span(
        name=s.name,
        span_id=s.span_id,
        parent_span_id=s.parent_span_id,
        kind=s.kind,
        attributes=_struct(s.attributes),
        events=[
            traces_pb2.SpanEvent(
                name=e.name, time=_timestamp(e.time_ns), attributes=_struct(e.attributes)
            )
            for e in s.events
        ],
        status=traces_pb2.SpanStatus(code=s.status_code, message=s.status_message),
        start_time=_timestamp(s.start_ns),
        end_time=_timestamp(s.end_ns),
    )


def _ns(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos


def _health(stats: ExportStats) -> otel_config_pb2.ExporterHealth:
    snap = stats.snapshot()
    health = otel_config_pb2.ExporterHealth(
        last_error=snap.last_error,
        exported=snap.exported,
        failed=snap.failed,
        dropped=snap.dropped,
    )
    if snap.last_success_ns:
        health.last_success_time.CopyFrom(_timestamp(snap.last_success_ns))
    if snap.last_error_ns:
        health.last_error_time.CopyFrom(_timestamp(snap.last_error_ns))
    return health


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, telemetry: Telemetry, manager: OtelConfigManager) -> None:
        self._store: TraceStore = telemetry.store
        self._telemetry = telemetry
        self._manager = manager

    def _otel_health(self) -> otel_config_pb2.OtelHealth:
        return otel_config_pb2.OtelHealth(
            traces=_health(self._telemetry.trace_stats),
            metrics=_health(self._telemetry.metric_stats),
        )

    async def GetOtelConfig(
        self, request: admin_pb2.GetOtelConfigRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetOtelConfigResponse:
        settings = self._manager.settings
        return admin_pb2.GetOtelConfigResponse(
            config=to_proto(settings), version=settings.version, health=self._otel_health()
        )

    async def SetOtelConfig(
        self, request: admin_pb2.SetOtelConfigRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.SetOtelConfigResponse:
        expected = request.expected_version if request.HasField("expected_version") else None
        try:
            settings = await self._manager.set(request.config, expected)
        except InvalidConfig as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except StaleVersion as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except (ConfigStoreError, OSError) as e:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"config not saved, nothing changed: {e}"
            )
        except ValueError as e:
            # An exporter refused its settings while being built: nothing was switched.
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"config: {e}")
        return admin_pb2.SetOtelConfigResponse(
            config=to_proto(settings), version=settings.version, health=self._otel_health()
        )

    async def TestOtelConfig(
        self, request: admin_pb2.TestOtelConfigRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.TestOtelConfigResponse:
        try:
            results = await self._manager.test(request.config)
        except InvalidConfig as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        response = admin_pb2.TestOtelConfigResponse()
        for section, result in results.items():
            o = result.outcome
            getattr(response, section).CopyFrom(
                admin_pb2.ExportTestResult(
                    success=o.success,
                    reason=o.reason,
                    http_status=o.http_status,
                    grpc_code=o.grpc_code,
                    message=o.message,
                    elapsed=_duration(round(result.elapsed * 1e9)),
                )
            )
        return response

    async def ListTraces(
        self, request: admin_pb2.ListTracesRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListTracesResponse:
        page_size = request.page_size or DEFAULT_PAGE_SIZE
        if page_size > MAX_PAGE_SIZE:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"page_size: at most {MAX_PAGE_SIZE}, got {request.page_size}",
            )
        if request.status not in _STATUS_FILTER:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"status: unknown value {request.status}"
            )
        if request.min_duration.seconds < 0 or request.min_duration.nanos < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "min_duration: must be >= 0")
        try:
            traces, token = await asyncio.to_thread(
                self._store.list_traces,
                model=request.model,
                status=_STATUS_FILTER[request.status],
                start_min_ns=_ns(request.start_time_min)
                if request.HasField("start_time_min")
                else None,
                start_max_ns=_ns(request.start_time_max)
                if request.HasField("start_time_max")
                else None,
                min_duration_ns=request.min_duration.ToNanoseconds(),
                page_size=page_size,
                page_token=request.page_token,
            )
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return admin_pb2.ListTracesResponse(
            traces=[_summary(t) for t in traces], next_page_token=token
        )

    async def GetTrace(
        self, request: admin_pb2.GetTraceRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetTraceResponse:
        trace_id = request.trace_id.lower()
        if not _TRACE_ID.fullmatch(trace_id):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "trace_id: must be 32 hexadecimal digits"
            )
        spans = await asyncio.to_thread(self._store.get_trace, trace_id)
        if not spans:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"trace_id: no trace {trace_id} in the trace store"
            )
        return admin_pb2.GetTraceResponse(trace_id=trace_id, spans=[_span(s) for s in spans])
