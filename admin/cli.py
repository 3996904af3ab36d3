"""`aigw-admin`: the AdminService from a terminal.

    aigw-admin traces list [--model M] [--status ok|error] [--since 1h] [--min-duration 250ms]
    aigw-admin traces show TRACE_ID
    aigw-admin otel get
    aigw-admin otel set --traces-enabled true --traces-protocol http \\
        --traces-endpoint https://otlp.example.com/v1/traces --traces-header authorization=KEY
    aigw-admin otel test --metrics-protocol grpc --metrics-endpoint http://127.0.0.1:4317
    aigw-admin otel set --traces-endpoint https://collector:4318/v1/traces \
        --traces-ca-file ca.pem --traces-cert-file me.pem --traces-key-file me-key.pem
    aigw-admin otel history
    aigw-admin otel rollback 3
    aigw-admin replicas
    aigw-admin --addr aigw.example.com:50051 --cacert ca.pem [--cert me.pem --key me-key.pem] …

`otel set` and `otel test` start from the gateway's current config (Get), change only the
flags given, and `set` sends the version it started from, so two operators editing at once
cannot overwrite each other silently. Header values, query values and the TLS client key never
come back from the gateway: they are shown masked, and a masked value sent back keeps the stored
secret. `--<section>-ca-file`, `-cert-file` and `-key-file` read PEM files here and send their
content (the gateway keeps inline PEM, so every replica of a fleet gets it).

Plaintext by default, as `make run` serves; `--cacert` (trust this CA), `--tls` (trust the
system's CAs) or `--cert`/`--key` (a client certificate, for a listener with `client_ca_file`)
switch to TLS, like grpcurl's `-cacert`, `-cert` and `-key`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Sequence

import grpc
from aigw.v1 import admin_pb2, admin_pb2_grpc, otel_config_pb2, traces_pb2
from google.protobuf import json_format

from admin.otel_proto import duration

__all__ = ["main", "parse_duration", "render_waterfall"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SECTIONS = ("traces", "metrics")


def parse_duration(text: str) -> float:
    """`250ms`, `5s`, `1.5m`, `2h`, `7d` → seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 250ms, 5s, 1m, 2h")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _bool(text: str) -> bool:
    if text.lower() in ("true", "on", "yes", "1"):
        return True
    if text.lower() in ("false", "off", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value


def _pem_file(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise argparse.ArgumentTypeError(f"{path}: {e.strerror or e}") from None
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise argparse.ArgumentTypeError(f"{path}: not a PEM file") from None


def _add_exporter_flags(parser: argparse.ArgumentParser) -> None:
    for section in _SECTIONS:
        group = parser.add_argument_group(f"{section} exporter")
        flag = f"--{section}-"
        group.add_argument(flag + "enabled", type=_bool, metavar="true|false")
        group.add_argument(flag + "protocol", choices=["http", "grpc"])
        group.add_argument(flag + "endpoint", metavar="URL", help="the complete URL")
        group.add_argument(flag + "encoding", choices=["proto", "json"], help="HTTP only")
        group.add_argument(
            flag + "header", type=_header, action="append", metavar="NAME=VALUE", default=[]
        )
        group.add_argument(
            flag + "clear-headers", action="store_true", help="drop the stored headers first"
        )
        group.add_argument(flag + "timeout", type=parse_duration, metavar="DURATION")
        group.add_argument(flag + "compression", choices=["none", "gzip"])
        group.add_argument(
            flag + "ca-file", type=_pem_file, metavar="FILE", help="PEM CA(s) to trust, only"
        )
        group.add_argument(
            flag + "cert-file", type=_pem_file, metavar="FILE", help="PEM client cert (mTLS)"
        )
        group.add_argument(
            flag + "key-file", type=_pem_file, metavar="FILE", help="PEM key of --*-cert-file"
        )
        group.add_argument(
            flag + "server-name", metavar="NAME", help="name the certificate must be valid for"
        )
        group.add_argument(flag + "min-tls", choices=["1.2", "1.3"])
        group.add_argument(
            flag + "insecure-skip-verify",
            type=_bool,
            nargs="?",
            const=True,
            metavar="true|false",
            help="do NOT verify the backend's certificate",
        )
        group.add_argument(
            flag + "clear-tls", action="store_true", help="drop the stored TLS settings first"
        )
        if section == "metrics":
            group.add_argument("--metrics-interval", type=parse_duration, metavar="DURATION")
            group.add_argument("--metrics-temporality", choices=["cumulative", "delta"])


def _edit(
    config: otel_config_pb2.OtelConfig, args: argparse.Namespace
) -> otel_config_pb2.OtelConfig:
    """A config holding only the sections the flags touch, each edited from the current one."""
    edited = otel_config_pb2.OtelConfig()
    for section in _SECTIONS:
        values = {k[len(section) + 1 :]: v for k, v in vars(args).items() if k.startswith(section)}
        # `is not None`, not truthiness: `--traces-enabled false` is a change too.
        clears = ("clear_headers", "clear_tls")
        touched = any(values[k] for k in clears) or any(
            v is not None and v != [] for k, v in values.items() if k not in clears
        )
        if not touched:
            continue
        current = getattr(config, section)
        target = getattr(edited, section)
        target.CopyFrom(current)
        target.ClearField("warnings")  # output only
        if values["clear_headers"]:
            target.ClearField("headers")
        if values["enabled"] is not None:
            target.enabled = values["enabled"]
        if values["protocol"]:
            target.protocol = otel_config_pb2.Protocol.Value(
                f"PROTOCOL_{values['protocol'].upper()}"
            )
        if values["endpoint"] is not None:
            target.endpoint = values["endpoint"]
        if values["encoding"]:
            target.encoding = otel_config_pb2.Encoding.Value(
                f"ENCODING_{values['encoding'].upper()}"
            )
        for name, value in values["header"]:
            target.headers[name] = value
        if values["timeout"] is not None:
            target.timeout.CopyFrom(duration(values["timeout"]))
        if values["compression"]:
            target.compression = otel_config_pb2.Compression.Value(
                f"COMPRESSION_{values['compression'].upper()}"
            )
        _edit_tls(target, values)
        if section == "metrics":
            if values["interval"] is not None:
                target.export_interval.CopyFrom(duration(values["interval"]))
            if values["temporality"]:
                target.temporality = otel_config_pb2.Temporality.Value(
                    f"TEMPORALITY_{values['temporality'].upper()}"
                )
    return edited


def _edit_tls(target: otel_config_pb2.ExporterConfig, values: dict) -> None:
    """The TLS flags on `target` (the stored key stays masked: the gateway keeps it)."""
    if values["clear_tls"]:
        target.ClearField("tls")
    tls = otel_config_pb2.TlsConfig()
    tls.CopyFrom(target.tls)
    if values["ca_file"] is not None:
        tls.ca_pem = values["ca_file"]
    if values["cert_file"] is not None:
        tls.client_cert_pem = values["cert_file"]
    if values["key_file"] is not None:
        tls.client_key_pem = values["key_file"]
    if values["server_name"] is not None:
        tls.server_name = values["server_name"]
    if values["min_tls"]:
        tls.min_version = otel_config_pb2.TlsVersion.Value(
            f"TLS_VERSION_{values['min_tls'].replace('.', '_')}"
        )
    if values["insecure_skip_verify"] is not None:
        tls.insecure_skip_verify = values["insecure_skip_verify"]
    if tls.ByteSize():
        target.tls.CopyFrom(tls)


def _print_json(message: object) -> None:
    print(json_format.MessageToJson(message, indent=2))  # type: ignore[arg-type]


def _ms(seconds: int, nanos: int) -> float:
    return seconds * 1000 + nanos / 1e6


def render_waterfall(spans: Sequence[traces_pb2.Span], width: int = 40) -> str:
    """Spans as an indented tree with bars on a shared time axis."""
    if not spans:
        return "(no spans)"
    starts = {s.span_id: _ms(s.start_time.seconds, s.start_time.nanos) for s in spans}
    ends = {s.span_id: _ms(s.end_time.seconds, s.end_time.nanos) for s in spans}
    t0, t1 = min(starts.values()), max(ends.values())
    total = max(t1 - t0, 1e-9)
    ids = {s.span_id for s in spans}
    children: dict[str, list[traces_pb2.Span]] = {}
    for s in sorted(spans, key=lambda s: starts[s.span_id]):
        parent = s.parent_span_id if s.parent_span_id in ids else ""
        children.setdefault(parent, []).append(s)
    lines = [f"{'offset':>9} {'duration':>10}  {'':{width}}  span"]

    def walk(parent: str, depth: int) -> None:
        for s in children.get(parent, []):
            begin, end = starts[s.span_id] - t0, ends[s.span_id] - t0
            left = int(begin / total * width)
            length = max(1, round((end - begin) / total * width))
            bar = (" " * left + "█" * length)[:width].ljust(width)
            status = "" if s.status.code != "ERROR" else f"  ERROR {s.status.message}"
            code = s.attributes.fields.get("rpc.response.status_code")
            suffix = f" [{code.string_value}]" if code is not None else ""
            lines.append(
                f"{begin:8.2f}ms {end - begin:8.2f}ms  {bar}  "
                f"{'  ' * depth}{s.name} ({s.kind}){suffix}{status}"
            )
            walk(s.span_id, depth + 1)

    walk("", 0)
    return "\n".join(lines)


def _list_traces(
    stub: admin_pb2_grpc.AdminServiceStub, args: argparse.Namespace, meta: list
) -> int:
    request = admin_pb2.ListTracesRequest(model=args.model or "", page_size=args.limit)
    if args.status:
        request.status = traces_pb2.TraceStatusFilter.Value(
            f"TRACE_STATUS_FILTER_{args.status.upper()}"
        )
    if args.since is not None:
        request.start_time_min.FromNanoseconds(time.time_ns() - round(args.since * 1e9))
    if args.min_duration is not None:
        request.min_duration.CopyFrom(duration(args.min_duration))
    if args.page_token:
        request.page_token = args.page_token
    reply = stub.ListTraces(request, metadata=meta, timeout=args.timeout)
    if args.json:
        _print_json(reply)
        return 0
    print(
        f"{'trace_id':32}  {'start (UTC)':23}  {'duration':>10}  {'status':6}  {'code':18}  model"
    )
    for t in reply.traces:
        start = t.start_time.ToDatetime().isoformat(sep=" ", timespec="milliseconds")
        ms = _ms(t.duration.seconds, t.duration.nanos)
        print(
            f"{t.trace_id}  {start:23}  {ms:8.2f}ms  {t.status:6}  {t.rpc_status_code:18}  "
            f"{t.model}"
        )
    if reply.next_page_token:
        print(f"more: --page-token {reply.next_page_token}")
    return 0


def _show_trace(stub: admin_pb2_grpc.AdminServiceStub, args: argparse.Namespace, meta: list) -> int:
    reply = stub.GetTrace(
        admin_pb2.GetTraceRequest(trace_id=args.trace_id), metadata=meta, timeout=args.timeout
    )
    if args.json:
        _print_json(reply)
    else:
        print(f"trace {reply.trace_id}")
        print(render_waterfall(reply.spans))
    return 0


def _when(ts: object) -> str:
    return ts.ToDatetime().isoformat(sep=" ", timespec="seconds")  # type: ignore[attr-defined]


def _history(stub: admin_pb2_grpc.AdminServiceStub, args: argparse.Namespace, meta: list) -> int:
    reply = stub.ListOtelConfigHistory(
        admin_pb2.ListOtelConfigHistoryRequest(page_size=args.limit),
        metadata=meta,
        timeout=args.timeout,
    )
    if args.json:
        _print_json(reply)
        return 0
    print(f"{'version':>7}  {'applied (UTC)':19}  {'action':12}  {'by':24}  traces / metrics")
    for v in reply.versions:
        action = v.action + (f" to {v.restored_version}" if v.restored_version else "")
        sections = " / ".join(
            (s.endpoint or "-") if s.enabled else "off" for s in (v.config.traces, v.config.metrics)
        )
        print(f"{v.version:>7}  {_when(v.applied_time):19}  {action:12}  {v.author:24}  {sections}")
    return 0


def _rollback(stub: admin_pb2_grpc.AdminServiceStub, args: argparse.Namespace, meta: list) -> int:
    current = stub.GetOtelConfig(
        admin_pb2.GetOtelConfigRequest(), metadata=meta, timeout=args.timeout
    )
    reply = stub.RollbackOtelConfig(
        admin_pb2.RollbackOtelConfigRequest(version=args.version, expected_version=current.version),
        metadata=meta,
        timeout=args.timeout,
    )
    _print_json(reply)
    return 0


def _replicas(stub: admin_pb2_grpc.AdminServiceStub, args: argparse.Namespace, meta: list) -> int:
    reply = stub.ListReplicas(admin_pb2.ListReplicasRequest(), metadata=meta, timeout=args.timeout)
    if args.json:
        _print_json(reply)
        return 0
    state = "converged" if reply.converged else "NOT converged"
    print(f"config version {reply.current_version}: {state}")
    print(f"{'instance':36}  {'address':21}  {'state':5}  {'applied':>7}  last heartbeat (UTC)")
    for r in reply.replicas:
        live = "live" if r.state == admin_pb2.REPLICA_STATE_LIVE else "gone"
        me = "  (this one)" if r.self else ""
        print(
            f"{r.instance_id:36}  {r.address:21}  {live:5}  {r.applied_version:>7}  "
            f"{_when(r.last_heartbeat_time)}{me}"
        )
    return 0 if reply.converged else 1


def _otel(stub: admin_pb2_grpc.AdminServiceStub, args: argparse.Namespace, meta: list) -> int:
    if args.action == "history":
        return _history(stub, args, meta)
    if args.action == "rollback":
        return _rollback(stub, args, meta)
    current = stub.GetOtelConfig(
        admin_pb2.GetOtelConfigRequest(), metadata=meta, timeout=args.timeout
    )
    if args.action == "get":
        _print_json(current)
        return 0
    edited = _edit(current.config, args)
    if not edited.HasField("traces") and not edited.HasField("metrics"):
        print(
            "aigw-admin: nothing to change: give --traces-* or --metrics-* flags", file=sys.stderr
        )
        return 2
    if args.action == "set":
        reply = stub.SetOtelConfig(
            admin_pb2.SetOtelConfigRequest(config=edited, expected_version=current.version),
            metadata=meta,
            timeout=args.timeout,
        )
        _print_json(reply)
        return 0
    result = stub.TestOtelConfig(
        admin_pb2.TestOtelConfigRequest(config=edited), metadata=meta, timeout=args.timeout
    )
    _print_json(result)
    failed = [r for r in (result.traces, result.metrics) if r.ByteSize() and not r.success]
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aigw-admin", description="aigw AdminService client")
    parser.add_argument(
        "--addr",
        default=os.environ.get("AIGW_ADDR", "127.0.0.1:50051"),
        help="gateway HOST:PORT (env AIGW_ADDR; default 127.0.0.1:50051)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    tls = parser.add_argument_group("TLS (plaintext unless one of these is given)")
    tls.add_argument(
        "--cacert",
        metavar="FILE",
        default=os.environ.get("AIGW_CACERT") or None,
        help="PEM CA certificate(s) to trust for the gateway's certificate (env AIGW_CACERT)",
    )
    tls.add_argument(
        "--cert",
        metavar="FILE",
        default=os.environ.get("AIGW_CLIENT_CERT") or None,
        help="PEM client certificate for mTLS (env AIGW_CLIENT_CERT); needs --key",
    )
    tls.add_argument(
        "--key",
        metavar="FILE",
        default=os.environ.get("AIGW_CLIENT_KEY") or None,
        help="PEM private key of --cert (env AIGW_CLIENT_KEY)",
    )
    tls.add_argument("--tls", action="store_true", help="TLS, trusting the system's CAs")
    tls.add_argument(
        "--servername", metavar="NAME", help="the name to verify the gateway's certificate for"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    traces = commands.add_parser("traces", help="the gateway's trace store")
    traces_cmd = traces.add_subparsers(dest="action", required=True)
    listing = traces_cmd.add_parser("list", help="newest traces first")
    listing.add_argument("--model", help="only this route")
    listing.add_argument("--status", choices=["ok", "error"])
    listing.add_argument("--since", type=parse_duration, metavar="DURATION", help="e.g. 1h")
    listing.add_argument("--min-duration", type=parse_duration, metavar="DURATION")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--page-token")
    listing.add_argument("--json", action="store_true")
    show = traces_cmd.add_parser("show", help="one trace as a waterfall")
    show.add_argument("trace_id")
    show.add_argument("--json", action="store_true")

    otel = commands.add_parser("otel", help="OTLP export config")
    otel_cmd = otel.add_subparsers(dest="action", required=True)
    otel_cmd.add_parser("get", help="the effective config (headers masked) and exporter health")
    _add_exporter_flags(otel_cmd.add_parser("set", help="change and apply at once"))
    _add_exporter_flags(otel_cmd.add_parser("test", help="one real export, nothing saved"))
    history = otel_cmd.add_parser("history", help="applied versions, newest first")
    history.add_argument("--limit", type=int, default=20)
    history.add_argument("--json", action="store_true")
    rollback = otel_cmd.add_parser("rollback", help="make an earlier version current again")
    rollback.add_argument("version", type=int)
    replicas = commands.add_parser(
        "replicas", help="the fleet: every replica and the config version it applied"
    )
    replicas.add_argument("--json", action="store_true")
    return parser


def _read_pem(parser: argparse.ArgumentParser, flag: str, path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        parser.error(f"{flag} {path}: {e.strerror or e}")


def _channel(parser: argparse.ArgumentParser, args: argparse.Namespace) -> grpc.Channel:
    """Plaintext unless a TLS flag is given; then TLS, with a client certificate for mTLS."""
    if not (args.tls or args.cacert or args.cert or args.key or args.servername):
        return grpc.insecure_channel(args.addr)
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together (env AIGW_CLIENT_CERT, AIGW_CLIENT_KEY)")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read_pem(parser, "--cacert", args.cacert),
        private_key=_read_pem(parser, "--key", args.key),
        certificate_chain=_read_pem(parser, "--cert", args.cert),
    )
    options = [("grpc.ssl_target_name_override", args.servername)] if args.servername else []
    return grpc.secure_channel(args.addr, credentials, options=options)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    token = os.environ.get("AIGW_ADMIN_TOKEN", "")
    meta = [("authorization", f"Bearer {token}")] if token else []
    with _channel(parser, args) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        try:
            if args.command == "traces":
                return (_list_traces if args.action == "list" else _show_trace)(stub, args, meta)
            if args.command == "replicas":
                return _replicas(stub, args, meta)
            return _otel(stub, args, meta)
        except grpc.RpcError as e:
            print(f"aigw-admin: {e.code().name}: {e.details()}", file=sys.stderr)  # type: ignore[attr-defined]
            return 1
