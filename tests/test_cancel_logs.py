"""A client that cancels a stream cannot fill the log, and the cancelled call's spans still end.

Cancelling `StreamComplete` after its first chunk used to log `ERROR opentelemetry.context:
Failed to detach context` from the interceptor and from the GenAI span, about two per cancel:
when the cancel lands while the stream's async generators are parked at a `yield` (the server
is sending, not waiting for the next token), the event loop's async-generator finalizer closes
them from another task, whose `contextvars.Context` is not the one the spans were attached in.

Both timings are covered, on the echo route and on an `openai` route: a stream that waits
between tokens (the cancel lands while the generator awaits) and one that streams flat out
(the cancel lands while it is parked at a `yield` — the case that used to log).
"""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from aigw.v1 import admin_pb2, admin_pb2_grpc, completion_pb2_grpc

from gateway.config import RouteConfig
from gateway.server import Gateway
from tests.conftest import GatewayFactory, chat
from tests.openai_stub import OpenAIStub, Reply

CANCELS = 20
KEY_ENV = "AIGW_TEST_CANCEL_KEY"
# Long enough that the stream is still running (and sending) when the client cancels.
LONG = " ".join(f"w{i}" for i in range(2000))

# (seconds between tokens, prompt)
TIMINGS = {"between-tokens": (0.2, "a b c d e f g h i j k l"), "flat-out": (0.0, LONG)}


async def _cancel_after_first_chunk(
    gw: Gateway, model: str, prompt: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert gw.telemetry is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as ch:
        stub = completion_pb2_grpc.CompletionStub(ch)
        for _ in range(CANCELS):
            call = stub.StreamComplete(chat(prompt, model=model), timeout=10)
            first = await call.read()
            assert first.delta.strip() != ""
            call.cancel()
        admin = admin_pb2_grpc.AdminServiceStub(ch)
        # The server notices each cancel on its own time: wait until every call's two spans
        # have ended and reached the trace store.
        traces: list[admin_pb2.TraceSummary] = []
        async with asyncio.timeout(10):
            while True:
                await asyncio.to_thread(gw.telemetry.store_processor.force_flush, 5000)
                listed = await admin.ListTraces(admin_pb2.ListTracesRequest(page_size=1000))
                traces = [
                    t
                    for t in listed.traces
                    if t.root_span_name == "aigw.v1.Completion/StreamComplete"
                ]
                if len(traces) == CANCELS and all(t.span_count == 2 for t in traces):
                    break
                await asyncio.sleep(0.05)
        assert {t.rpc_status_code for t in traces} == {"CANCELLED"}
        for summary in traces:
            trace = await admin.GetTrace(admin_pb2.GetTraceRequest(trace_id=summary.trace_id))
            by_kind = {s.kind: s for s in trace.spans}
            assert set(by_kind) == {"SERVER", "CLIENT"}
            server, client = by_kind["SERVER"], by_kind["CLIENT"]
            assert server.parent_span_id == ""
            assert client.parent_span_id == server.span_id
            assert server.attributes["rpc.response.status_code"] == "CANCELLED"
            assert server.attributes["error.type"] == "CANCELLED"
            # A client's cancel is not the server's failure; the upstream call did not finish.
            assert server.status.code == "UNSET"
            assert client.attributes["error.type"] == "cancelled"
            assert client.status.code == "ERROR"
            assert client.status.message == "cancelled by the client"
            # The GenAI span ends first, inside the server span.
            assert server.end_time.ToNanoseconds() >= client.end_time.ToNanoseconds() > 0
    # Let whatever the cancels left behind (generator finalizers) run before reading the log.
    for _ in range(5):
        await asyncio.sleep(0.01)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], "\n".join(f"{r.name}: {r.getMessage()}" for r in errors)
    assert not [r for r in caplog.records if "detach" in r.getMessage().lower()]


@pytest.mark.parametrize("timing", TIMINGS)
async def test_cancelling_echo_streams_logs_no_error_and_ends_their_spans(
    gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture, timing: str
) -> None:
    delay, prompt = TIMINGS[timing]
    route = RouteConfig(name="echo", provider="echo", model="echo-1", token_delay_ms=delay * 1000)
    gw = await gateway_factory(routes={"echo": route})
    await _cancel_after_first_chunk(gw, "echo", prompt, caplog)


@pytest.mark.parametrize("timing", TIMINGS)
async def test_cancelling_openai_streams_logs_no_error_and_ends_their_spans(
    gateway_factory: GatewayFactory,
    openai_stub: OpenAIStub,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    timing: str,
) -> None:
    delay, prompt = TIMINGS[timing]
    monkeypatch.setenv(KEY_ENV, "sk-test-cancel-0123456789")
    openai_stub.by_model["gpt-test"] = Reply(token_delay=delay)
    route = RouteConfig(
        name="gpt",
        provider="openai",
        model="gpt-test",
        base_url=openai_stub.base_url,
        api_key_env=KEY_ENV,
        timeout_seconds=10,
    )
    gw = await gateway_factory(routes={"gpt": route})
    await _cancel_after_first_chunk(gw, "gpt", prompt, caplog)
    assert len(openai_stub.requests) == CANCELS
    if delay:
        # Every upstream stream was closed, not left running to its end. (Flat out, the stub
        # may have written its whole answer before the cancel reached the gateway.)
        for request in openai_stub.requests:
            assert await request.wait_client_gone(5)


async def test_a_genai_span_held_across_yield_can_be_closed_from_another_task(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`UpstreamCall.active()` on its own: opened in one task, closed by another."""
    from opentelemetry import trace

    from gateway.chat import ChatMessage, ChatRequest
    from gateway.config import TelemetryConfig
    from gateway.telemetry.recorder import CallRecorder

    caplog.set_level(logging.DEBUG)
    genai = CallRecorder(TelemetryConfig(), sink=lambda record: None).genai
    route = RouteConfig(name="echo", provider="echo", model="echo-1")
    request = ChatRequest(model="echo-1", messages=(ChatMessage("user", "hi"),))

    def start() -> object:
        return genai.start(
            route=route,
            provider="echo",
            server_address=None,
            server_port=None,
            request=request,
            metadata={},
            stream=True,
        )

    def current() -> int:
        return trace.get_current_span().get_span_context().span_id

    async def chunks(call) -> object:
        with call.active():
            yield current()
            yield current()

    # Opened and closed in the same task: current inside, restored after.
    call = start()
    agen = chunks(call)
    assert await agen.__anext__() == call.span.span_id
    assert await agen.__anext__() == call.span.span_id
    await agen.aclose()
    assert trace.get_current_span() is trace.INVALID_SPAN

    # Opened here, closed from a task with a Context of its own (as the loop's async-generator
    # finalizer does after a client cancel): no error, and this task's context is unchanged.
    call = start()
    agen = chunks(call)
    assert await agen.__anext__() == call.span.span_id
    assert current() == call.span.span_id  # parked at the yield, still attached here
    await asyncio.get_running_loop().create_task(agen.aclose())
    call.fail(None, error_type="cancelled", message="cancelled by the client")
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    # The Context it was attached in keeps it: in the gateway that is the cancelled RPC's
    # task's, which is over.
    assert current() == call.span.span_id
