"""The baseline: a bare `grpc.aio` server answering `aigw.v1.Completion` with a fixed response.

No routing, no validation, no telemetry: what the same proto costs on the same machine with
nothing of aigw around it. `Complete` returns the response the echo route gives for the bench
payload (same size on the wire); `StreamComplete` sleeps `--stream-delay-ms` and then sends the
same chunks as the echo route, so the streaming client has a transport floor to compare with.

    python -m tests.bench.baseline_server --port 0 --stream-delay-ms 50

It prints `LISTENING <port>` on stdout once serving and stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import AsyncIterator

import grpc
from aigw.v1 import completion_pb2, completion_pb2_grpc

from tests.bench.payload import echo_chunks, echo_response


class FixedCompletion(completion_pb2_grpc.CompletionServicer):
    def __init__(self, stream_delay: float) -> None:
        self._response = echo_response()
        self._chunks = echo_chunks()
        self._stream_delay = stream_delay

    async def Complete(
        self, request: completion_pb2.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> completion_pb2.CompleteResponse:
        return self._response

    async def StreamComplete(
        self, request: completion_pb2.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[completion_pb2.CompleteChunk]:
        if self._stream_delay:
            await asyncio.sleep(self._stream_delay)
        for chunk in self._chunks:
            yield chunk


async def serve(host: str, port: int, stream_delay: float) -> None:
    server = grpc.aio.server()
    completion_pb2_grpc.add_CompletionServicer_to_server(FixedCompletion(stream_delay), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"cannot listen on {host}:{port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    print(f"LISTENING {bound}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--stream-delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.stream_delay_ms / 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
