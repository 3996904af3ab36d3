"""The one request every scenario sends, and the answer the echo route gives to it.

The baseline server answers with `echo_response()` so both servers put the same bytes on the
wire (the id differs, its length does not); the harness checks that before measuring.
"""

from __future__ import annotations

import re
import struct

from aigw.v1 import completion_pb2

__all__ = [
    "STREAM_ROUTE",
    "UNARY_ROUTE",
    "bench_request",
    "echo_chunks",
    "echo_response",
    "grpc_frame",
]

UNARY_ROUTE = "echo"  # latency_ms = 0
STREAM_ROUTE = "echo-stream"  # latency_ms = the configured streaming delay
SYSTEM = "You are a concise assistant."
PROMPT = "Explain in one sentence why gRPC suits an AI gateway."
ECHO_MODEL = "echo-1"
# The echo provider's tokens: each word with the whitespace before it.
_TOKEN = re.compile(r"\s*\S+|\s+$")


def bench_request(route: str = UNARY_ROUTE) -> completion_pb2.CompleteRequest:
    return completion_pb2.CompleteRequest(
        model=route,
        messages=[
            completion_pb2.Message(role="system", content=SYSTEM),
            completion_pb2.Message(role="user", content=PROMPT),
        ],
        max_tokens=256,
        temperature=0.2,
        metadata={"tenant": "bench"},
    )


def grpc_frame(message: completion_pb2.CompleteRequest) -> bytes:
    """A gRPC length-prefixed message (uncompressed), as h2load posts it with `-d`."""
    body = message.SerializeToString()
    return struct.pack(">?I", False, len(body)) + body


def _usage() -> completion_pb2.Usage:
    tokens = _TOKEN.findall(PROMPT)
    inputs = sum(len(_TOKEN.findall(text)) + 1 for text in (SYSTEM, PROMPT))
    return completion_pb2.Usage(input_tokens=inputs, output_tokens=len(tokens))


_FIXED_ID = "echo-" + "0" * 32


def echo_response() -> completion_pb2.CompleteResponse:
    return completion_pb2.CompleteResponse(
        id=_FIXED_ID,
        model=ECHO_MODEL,
        provider="echo",
        content=PROMPT,
        finish_reason="stop",
        usage=_usage(),
    )


def echo_chunks() -> list[completion_pb2.CompleteChunk]:
    chunks = [
        completion_pb2.CompleteChunk(id=_FIXED_ID, model=ECHO_MODEL, provider="echo", delta=token)
        for token in _TOKEN.findall(PROMPT)
    ]
    chunks.append(
        completion_pb2.CompleteChunk(
            id=_FIXED_ID, model=ECHO_MODEL, provider="echo", finish_reason="stop", usage=_usage()
        )
    )
    return chunks
