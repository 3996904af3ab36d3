"""`aigw serve`: run the gateway. Flags override the config file; the file overrides defaults."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from gateway import __version__
from gateway.config import ConfigError, GatewayConfig, load_config, parse_listen_address

__all__ = ["main"]

_MAX_WORKERS = 64


def _address(value: str) -> str:
    try:
        parse_listen_address(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def _workers(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= _MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {_MAX_WORKERS}")
    return n


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aigw", description="gRPC AI gateway")
    parser.add_argument("--version", action="version", version=f"aigw {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway until SIGTERM/SIGINT")
    serve.add_argument("--config", type=Path, help="TOML config file (default: built-in)")
    serve.add_argument("--listen", type=_address, help="gRPC HOST:PORT (default 127.0.0.1:50051)")
    serve.add_argument(
        "--metrics-listen", type=_address, help="/metrics HOST:PORT (default 127.0.0.1:9464)"
    )
    serve.add_argument("--state-dir", type=Path, help="trace store and OTEL config directory")
    serve.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="serving processes sharing the gRPC port (default 1); telemetry has its own",
    )
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands.add_parser(
        "keygen", help="print a new key for [store] encryption_key_env (AIGW_CONFIG_KEY)"
    )
    return parser


def configure(args: argparse.Namespace) -> GatewayConfig:
    config = load_config(args.config)
    overrides = {
        key: value
        for key, value in (
            ("listen", args.listen),
            ("metrics_listen", args.metrics_listen),
            ("state_dir", args.state_dir),
        )
        if value is not None
    }
    if overrides:
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, **overrides))
    return config


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "keygen":
        from admin.secret_box import new_key

        print(new_key())
        return 0
    from gateway.processes.child import configure_logging

    configure_logging(args.log_level)
    try:
        config = configure(args)
    except ConfigError as e:
        print(f"aigw: invalid config:\n{e}", file=sys.stderr)
        return 2
    from gateway.processes.supervisor import serve

    return serve(config, args.workers, args.log_level)
