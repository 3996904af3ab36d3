"""The `aigw.v1.AdminService` servicer: trace store queries and the OTLP export config."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import grpc
from aigw.v1 import admin_pb2, admin_pb2_grpc, otel_config_pb2, traces_pb2
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from admin.config_manager import OtelConfigManager
from admin.config_store import ConfigStoreError, ConfigStoreUnavailable, ConfigVersion
from admin.control_views import (
    CHANGE_ERRORS,
    READ_YOUR_WRITES_SECONDS,
    FleetUnavailable,
    change_failure,
    fleet_view,
    health_from_document,
)
from admin.otel_config import InvalidConfig
from admin.otel_proto import to_proto
from admin.replicas import Replicas, ReplicaStatus
from gateway.auth import admin_principal
from gateway.telemetry.control import TelemetryControl
from gateway.telemetry.export_stats import HealthSnapshot
from gateway.telemetry.trace_store import (
    StoredSpan,
    TraceStore,
    TraceStoreError,
    TraceStoreUnavailable,
    TraceSummary,
)

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
        replica=t.replica,
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


def _replica(r: ReplicaStatus) -> admin_pb2.Replica:
    i = r.identity
    return admin_pb2.Replica(
        instance_id=i.instance_id,
        address=i.address,
        hostname=i.hostname,
        pid=i.pid,
        start_time=_timestamp(i.started_ns),
        last_heartbeat_time=_timestamp(r.heartbeat_ns),
        applied_version=r.applied_version,
        state=admin_pb2.REPLICA_STATE_LIVE if r.live else admin_pb2.REPLICA_STATE_GONE,
        health=otel_config_pb2.OtelHealth(
            traces=_health(health_from_document(r.health.get("traces"))),
            metrics=_health(health_from_document(r.health.get("metrics"))),
        ),
        self=r.is_self,
    )


def _config_version(v: ConfigVersion) -> admin_pb2.OtelConfigVersion:
    return admin_pb2.OtelConfigVersion(
        version=v.version,
        config=to_proto(v.settings),
        applied_time=_timestamp(v.applied_ns),
        author=v.author,
        action=v.action,
        restored_version=v.restored_version,
    )


def _health(snap: HealthSnapshot) -> otel_config_pb2.ExporterHealth:
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


async def _abort_change(context: grpc.aio.ServicerContext, e: Exception) -> None:
    """A failed Set or rollback, mapped as the console maps it; nothing was changed."""
    await context.abort(*change_failure(e))


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self, telemetry: TelemetryControl, manager: OtelConfigManager, replicas: Replicas
    ) -> None:
        self._store: TraceStore = telemetry.traces
        self._telemetry = telemetry
        self._manager = manager
        self._replicas = replicas

    def _otel_health(self) -> otel_config_pb2.OtelHealth:
        health = self._telemetry.health()
        return otel_config_pb2.OtelHealth(
            traces=_health(health.traces),
            metrics=_health(health.metrics),
        )

    def _store_health(self) -> admin_pb2.ConfigStoreHealth:
        h = self._manager.store.health()
        pb = admin_pb2.ConfigStoreHealth(
            backend=h.backend, connected=h.connected, last_error=h.last_error
        )
        if h.last_error_ns:
            pb.last_error_time.CopyFrom(_timestamp(h.last_error_ns))
        return pb

    async def GetOtelConfig(
        self, request: admin_pb2.GetOtelConfigRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetOtelConfigResponse:
        settings = self._manager.settings
        return admin_pb2.GetOtelConfigResponse(
            config=to_proto(settings),
            version=settings.version,
            health=self._otel_health(),
            store=self._store_health(),
        )

    async def SetOtelConfig(
        self, request: admin_pb2.SetOtelConfigRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.SetOtelConfigResponse:
        expected = request.expected_version if request.HasField("expected_version") else None
        try:
            settings = await self._manager.set(request.config, expected, author=admin_principal())
        except CHANGE_ERRORS as e:
            await _abort_change(context, e)
        return admin_pb2.SetOtelConfigResponse(
            config=to_proto(settings), version=settings.version, health=self._otel_health()
        )

    async def RollbackOtelConfig(
        self, request: admin_pb2.RollbackOtelConfigRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RollbackOtelConfigResponse:
        if request.version < 1:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "version: the version to restore, 1 or more"
            )
        expected = request.expected_version if request.HasField("expected_version") else None
        try:
            settings = await self._manager.rollback(
                request.version, expected, author=admin_principal()
            )
        except CHANGE_ERRORS as e:
            await _abort_change(context, e)
        return admin_pb2.RollbackOtelConfigResponse(
            config=to_proto(settings), version=settings.version, health=self._otel_health()
        )

    async def ListOtelConfigHistory(
        self,
        request: admin_pb2.ListOtelConfigHistoryRequest,
        context: grpc.aio.ServicerContext,
    ) -> admin_pb2.ListOtelConfigHistoryResponse:
        page_size = request.page_size or DEFAULT_PAGE_SIZE
        if page_size > MAX_PAGE_SIZE:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"page_size: at most {MAX_PAGE_SIZE}, got {request.page_size}",
            )
        try:
            versions = await asyncio.to_thread(
                self._manager.store.history,
                page_size=page_size + 1,
                before_version=request.before_version,
            )
        except ConfigStoreUnavailable as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"config store unavailable: {e}")
        except ConfigStoreError as e:
            await context.abort(grpc.StatusCode.INTERNAL, str(e))
        page = versions[:page_size]
        more = len(versions) > page_size
        return admin_pb2.ListOtelConfigHistoryResponse(
            versions=[_config_version(v) for v in page],
            next_before_version=page[-1].version if more else 0,
        )

    async def ListReplicas(
        self, request: admin_pb2.ListReplicasRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListReplicasResponse:
        try:
            fleet = await fleet_view(self._replicas, self._manager)
        except FleetUnavailable as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        return admin_pb2.ListReplicasResponse(
            replicas=[_replica(r) for r in fleet.replicas],
            current_version=fleet.current_version,
            converged=fleet.converged,
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
            await asyncio.to_thread(self._telemetry.flush_traces, READ_YOUR_WRITES_SECONDS)
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
        except TraceStoreUnavailable as e:
            # The shared database is away: retryable, and the message holds no credential.
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        except TraceStoreError as e:
            # A store this replica cannot use (closed, schema too new): not the caller's fault.
            await context.abort(grpc.StatusCode.INTERNAL, str(e))
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
        try:
            await asyncio.to_thread(self._telemetry.flush_traces, READ_YOUR_WRITES_SECONDS)
            spans = await asyncio.to_thread(self._store.get_trace, trace_id)
        except TraceStoreUnavailable as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        except TraceStoreError as e:
            await context.abort(grpc.StatusCode.INTERNAL, str(e))
        if not spans:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"trace_id: no trace {trace_id} in the trace store"
            )
        return admin_pb2.GetTraceResponse(trace_id=trace_id, spans=[_span(s) for s in spans])
