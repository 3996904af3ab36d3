"""aigw on every core: a supervisor, one telemetry process and N serving processes.

    aigw serve --workers N
      supervisor ── starts, watches and restarts the others; orders the shutdown
      ├─ telemetry process: trace store, exporters, metrics, OTEL config, replicas,
      │    side-port (/metrics, console), AdminService — on a private unix socket
      └─ N serving processes: one gRPC port (SO_REUSEPORT); call records in batches to the
           telemetry process; AdminService calls forwarded to it

See supervisor.py for the lifecycle and docs/decisions.md for why.
"""
