"""`aigw serve`: run the gateway. Flags override the config file; the file overrides defaults."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from pathlib import Path

from gateway import __version__
from gateway.config import ConfigError, GatewayConfig, load_config, parse_listen_address

__all__ = ["main"]


def _address(value: str) -> str:
    try:
        parse_listen_address(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


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
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from gateway.redaction import install

    install()
    try:
        config = configure(args)
    except ConfigError as e:
        print(f"aigw: invalid config:\n{e}", file=sys.stderr)
        return 2
    from admin.config_store import ConfigStoreError
    from admin.otel_config import InvalidConfig
    from gateway.backends import BackendError
    from gateway.server import serve
    from gateway.telemetry.trace_store import TraceStoreError

    try:
        return asyncio.run(serve(config))
    except (ConfigStoreError, TraceStoreError, BackendError) as e:
        print(f"aigw: cannot start: {e}", file=sys.stderr)
        return 2
    except InvalidConfig as e:
        print(f"aigw: cannot start: invalid OTEL environment: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"aigw: cannot start: {e}", file=sys.stderr)
        return 1
