"""A trace query right after a call sees the call: no sleep, no polling (the README's grpcurl
block runs ListTraces straight after Complete)."""

from __future__ import annotations

from aigw.v1 import admin_pb2, admin_pb2_grpc, completion_pb2_grpc

from tests.conftest import chat


async def test_list_and_get_right_after_each_call_see_it(
    completion: completion_pb2_grpc.CompletionStub, admin: admin_pb2_grpc.AdminServiceStub
) -> None:
    for i in range(20):
        await completion.Complete(chat(f"call {i}"), timeout=5)
        page = await admin.ListTraces(admin_pb2.ListTracesRequest(model="echo", page_size=1000))
        assert len(page.traces) == i + 1
        newest = page.traces[0]
        trace = await admin.GetTrace(admin_pb2.GetTraceRequest(trace_id=newest.trace_id))
        assert sorted(s.kind for s in trace.spans) == ["CLIENT", "SERVER"]
