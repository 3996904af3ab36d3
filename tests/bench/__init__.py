"""`make bench`: aigw against a bare grpc.aio server, with minimal and full telemetry, and
in fleet mode (OTEL config and trace store in PostgreSQL).

    python -m tests.bench                       # the full run; writes BENCHMARKS.md
    python -m tests.bench --help                # scenarios, loads, rounds, output path

Modules: `payload` (the request and the echo answer), `baseline_server` (the bare server),
`otlp_sink` (OTLP receivers in their own process), `servers` (starting and checking the
processes), `load` (h2load and the asyncio client), `measure` (/proc, /metrics, machine),
`results` (runs and aggregates), `scenarios` (what runs, in which order), `report`
(BENCHMARKS.md, summary lines, targets), `profiling` (py-spy on the gateway under load),
`fleet` (fleet mode: the PostgreSQL cluster, trace store writes vs SQLite, config convergence
across three replicas; `python -m tests.bench.fleet` runs those two alone).

To measure a change before it lands, run it beside the current code in the same run:
copy the repository, change the copy, and `python -m tests.bench --alt-tree COPY` (each aigw
scenario then also runs from the copy, as NAME@alt, and the report compares the two per round).
"""
