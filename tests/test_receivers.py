"""The in-test OTLP receivers judge themselves too: a handler that broke fails the test."""

from __future__ import annotations

import urllib.error
import urllib.request

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.otlp_receivers import GrpcOtlpReceiver, HttpOtlpReceiver


def _break_modes(receiver: HttpOtlpReceiver | GrpcOtlpReceiver) -> None:
    def broken() -> object:
        raise RuntimeError("receiver bug")

    receiver._modes.next = broken  # type: ignore[method-assign]


def test_an_http_handler_error_fails_the_with_block() -> None:
    rx = HttpOtlpReceiver().__enter__()
    _break_modes(rx)
    body = trace_service_pb2.ExportTraceServiceRequest().SerializeToString()
    request = urllib.request.Request(
        rx.traces_url, data=body, headers={"Content-Type": "application/x-protobuf"}
    )
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(request, timeout=5)
    assert len(rx.errors) == 1
    assert "receiver bug" in rx.errors[0]
    with pytest.raises(AssertionError, match="HTTP OTLP receiver handler error"):
        rx.__exit__(None, None, None)


def test_a_grpc_handler_error_fails_the_with_block() -> None:
    rx = GrpcOtlpReceiver().__enter__()
    _break_modes(rx)
    with grpc.insecure_channel(rx.address) as ch:
        stub = trace_service_pb2_grpc.TraceServiceStub(ch)
        with pytest.raises(grpc.RpcError):
            stub.Export(trace_service_pb2.ExportTraceServiceRequest(), timeout=5)
    assert len(rx.errors) == 1
    assert "receiver bug" in rx.errors[0]
    with pytest.raises(AssertionError, match="gRPC OTLP receiver handler error"):
        rx.__exit__(None, None, None)


def test_chosen_failures_are_not_handler_errors() -> None:
    """A scripted 503 or UNAVAILABLE is an answer, not a receiver bug."""
    with GrpcOtlpReceiver() as rx:
        rx.fail_with(grpc.StatusCode.UNAVAILABLE, "scripted")
        with grpc.insecure_channel(rx.address) as ch:
            stub = trace_service_pb2_grpc.TraceServiceStub(ch)
            with pytest.raises(grpc.RpcError) as info:
                stub.Export(trace_service_pb2.ExportTraceServiceRequest(), timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert rx.errors == []
    with HttpOtlpReceiver() as http:
        http.respond_with(503, b"scripted")
        body = trace_service_pb2.ExportTraceServiceRequest().SerializeToString()
        request = urllib.request.Request(
            http.traces_url, data=body, headers={"Content-Type": "application/x-protobuf"}
        )
        with pytest.raises(urllib.error.HTTPError) as http_info:
            urllib.request.urlopen(request, timeout=5)
        assert http_info.value.code == 503
    assert http.errors == []


def test_an_error_already_raising_is_not_masked() -> None:
    rx = HttpOtlpReceiver().__enter__()
    rx.errors.append("a handler traceback")
    # The test's own failure propagates; the receiver adds no second exception.
    rx.__exit__(KeyError, KeyError("the test's own failure"), None)
