"""The OTLP backends of the bench, in their own process so their CPU is never the gateway's.

    python -m tests.bench.otlp_sink

Starts, with `tests/otlp_receivers.py`:
- `live`: an `HttpOtlpReceiver` answering 200 (traces and metrics of the full-telemetry
  scenarios);
- `black_hole`: an `HttpOtlpReceiver` that reads every request and never answers;
- `refusing`: a port bound but not listening (`refusing_endpoint`), so connections are refused.

Prints one line `READY {json}` with the URLs, then keeps count of what the live receiver got
(and forgets the bodies every second, so a long run does not grow this process). On SIGTERM or
SIGINT it prints `STATS {json}` and exits.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from contextlib import ExitStack
from typing import Any

from tests.otlp_receivers import HttpOtlpReceiver, flatten_spans, refusing_endpoint


def main() -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stats: dict[str, Any] = {"trace_requests": 0, "spans": 0, "metric_requests": 0}
    with ExitStack() as stack:
        live = stack.enter_context(HttpOtlpReceiver())
        hole = HttpOtlpReceiver().start()
        stack.callback(hole.stop)
        hole.black_hole()
        refusing = stack.enter_context(refusing_endpoint("/v1/traces"))
        ready = {
            "live_traces": live.traces_url,
            "live_metrics": live.metrics_url,
            "black_hole_traces": hole.traces_url,
            "refusing_traces": refusing,
        }
        print("READY " + json.dumps(ready), flush=True)

        def drain() -> None:
            records = live.requests
            live.clear()  # a request landing between these two lines is lost to the count only
            for record in records:
                if record.status != 200 or record.request is None:
                    continue
                if record.signal == "traces":
                    stats["trace_requests"] += 1
                    stats["spans"] += len(flatten_spans([record.request]))
                else:
                    stats["metric_requests"] += 1

        while not stop.wait(1.0):
            drain()
        drain()
        stats["black_holed_requests"] = len(hole.requests)
        stats["errors"] = len(live.errors) + len(hole.errors)
        stats["violations"] = len(live.violations)
    print("STATS " + json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
