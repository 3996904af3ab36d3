"""The gateway's TOML config: server, telemetry and routes, with every default in one place.

    [server]
    listen = "127.0.0.1:50051"
    metrics_listen = "127.0.0.1:9464"   # side-port: /metrics and the operator console
    side_port_max_connections = 1000    # past it, the longest-idle connection is closed
    side_port_idle_timeout_seconds = 30 # no complete request by then (idle, half-sent): closed
    state_dir = "/var/lib/aigw"
    grace_period_seconds = 10
    max_message_bytes = 4194304
    tls_cert_file = "/etc/aigw/tls.crt"     # TLS on the gRPC listener (re-read when changed)
    tls_key_file = "/etc/aigw/tls.key"      # given with tls_cert_file, never without
    client_ca_file = "/etc/aigw/client-ca.crt"  # mTLS: clients need a certificate from it

    [telemetry]
    record_content = false          # prompt/completion text on spans (opt-in)
    content_max_chars = 4096
    metadata_labels = ["tenant"]    # request metadata keys allowed as metric labels
    metadata_label_max_values = 50  # distinct values per key; the rest become "other"
    trace_store_max_spans = 100000
    trace_store_max_age_hours = 168

    [store]                         # fleet mode: replicas share config and traces in PostgreSQL
    database_url_env = "AIGW_DATABASE_URL"  # the variable's name; the URL holds a password
    encryption_key_env = "AIGW_CONFIG_KEY"  # Fernet key(s) for exporter secrets at rest
    heartbeat_seconds = 2           # replica heartbeat and config version check
    replica_forget_seconds = 600    # a replica gone this long leaves the list

    [routes.gpt-4o]
    provider = "openai"
    model = "gpt-4o"
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY"  # the variable's name; the key never sits in a file
    timeout_seconds = 60
    price_input_per_mtok = 2.5      # USD per million tokens
    price_output_per_mtok = 10.0

Every problem in a file is reported at once, each as `FILE: KEY: PROBLEM`. Unknown keys are
errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "PROVIDERS",
    "ConfigError",
    "GatewayConfig",
    "RouteConfig",
    "ServerConfig",
    "StoreConfig",
    "TelemetryConfig",
    "default_state_dir",
    "load_config",
    "parse_listen_address",
]

PROVIDERS = ("echo", "openai")
_ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL_KEY = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")


def default_state_dir() -> Path:
    if env := os.environ.get("AIGW_STATE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "aigw"


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    listen: str = "127.0.0.1:50051"
    metrics_listen: str = "127.0.0.1:9464"
    side_port_max_connections: int = 1000
    side_port_idle_timeout_seconds: float = 30.0
    state_dir: Path = field(default_factory=default_state_dir)
    grace_period_seconds: float = 10.0
    max_message_bytes: int = 4 * 1024 * 1024
    # TLS on the gRPC listener (gateway/tls.py): both or neither; the CA makes it mTLS.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    client_ca_file: Path | None = None


@dataclass(frozen=True, kw_only=True)
class TelemetryConfig:
    record_content: bool = False
    content_max_chars: int = 4096
    metadata_labels: tuple[str, ...] = ()
    metadata_label_max_values: int = 50
    trace_store_max_spans: int = 100_000
    trace_store_max_age_hours: float = 168.0


@dataclass(frozen=True, kw_only=True)
class StoreConfig:
    # Empty: the embedded default (config file + SQLite in the state directory).
    database_url_env: str = ""
    encryption_key_env: str = "AIGW_CONFIG_KEY"
    heartbeat_seconds: float = 2.0
    replica_forget_seconds: float = 600.0

    @property
    def shared(self) -> bool:
        return bool(self.database_url_env)


@dataclass(frozen=True, kw_only=True)
class RouteConfig:
    name: str
    provider: str
    # The upstream model name; for echo, the name it reports.
    model: str
    base_url: str = ""
    api_key_env: str = ""
    timeout_seconds: float = 60.0
    price_input_per_mtok: float | None = None
    price_output_per_mtok: float | None = None
    # Echo only: simulated time to first token and per-token delay.
    latency_ms: float = 0.0
    token_delay_ms: float = 0.0

    @property
    def priced(self) -> bool:
        return self.price_input_per_mtok is not None or self.price_output_per_mtok is not None


DEFAULT_ROUTES: Mapping[str, RouteConfig] = {
    "echo": RouteConfig(name="echo", provider="echo", model="echo-1"),
}


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    routes: Mapping[str, RouteConfig] = field(default_factory=lambda: dict(DEFAULT_ROUTES))
    source: str = "<defaults>"


class ConfigError(Exception):
    """A config file that cannot be used; the message lists every problem found."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{source}: {key}: {problem}" for key, problem in problems))


def parse_listen_address(value: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT`; port 0 asks the OS for a free one."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be 0-65535, got {port!r}")
    return host, int(port)


# --- parsing ------------------------------------------------------------------------------------

Check = Callable[[Any], str | None]  # None when the value is fine, else the problem


def _number(lo: float, hi: float) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return "must be a number"
        return None if lo <= v <= hi else f"must be between {lo:g} and {hi:g}, got {v:g}"

    return check


def _integer(lo: int, hi: int) -> Check:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int):
            return "must be an integer"
        return None if lo <= v <= hi else f"must be between {lo} and {hi}, got {v}"

    return check


def _string(pattern: re.Pattern[str] | None = None, what: str = "") -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, str):
            return "must be a string"
        if pattern is not None and not pattern.fullmatch(v):
            return f"must be {what}, got {v!r}"
        return None

    return check


def _boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def _listen(v: Any) -> str | None:
    if not isinstance(v, str):
        return "must be a string"
    try:
        parse_listen_address(v)
    except ValueError as e:
        return str(e)
    return None


def _label_keys(v: Any) -> str | None:
    if not isinstance(v, list) or not all(isinstance(k, str) for k in v):
        return "must be a list of strings"
    bad = [k for k in v if not _LABEL_KEY.fullmatch(k)]
    if bad:
        return f"keys must match [a-z_][a-z0-9_]*, got {bad[0]!r}"
    return None if len(v) <= 16 else "at most 16 keys"


def _url(v: Any) -> str | None:
    if not isinstance(v, str):
        return "must be a string"
    if not re.fullmatch(r"https?://[^\s/?#@]+(/[^\s?#]*)?", v):
        return "must be an http:// or https:// URL without credentials (use api_key_env)"
    return None


_SERVER: dict[str, Check] = {
    "listen": _listen,
    "metrics_listen": _listen,
    "side_port_max_connections": _integer(16, 100_000),
    "side_port_idle_timeout_seconds": _number(0.1, 60),
    "state_dir": _string(),
    "grace_period_seconds": _number(0, 3600),
    "max_message_bytes": _integer(1024, 256 * 1024 * 1024),
    "tls_cert_file": _string(re.compile(r"\S.*"), "a file path"),
    "tls_key_file": _string(re.compile(r"\S.*"), "a file path"),
    "client_ca_file": _string(re.compile(r"\S.*"), "a file path"),
}
_TLS_KEYS = ("tls_cert_file", "tls_key_file", "client_ca_file")
_TELEMETRY: dict[str, Check] = {
    "record_content": _boolean,
    "content_max_chars": _integer(0, 1_000_000),
    "metadata_labels": _label_keys,
    "metadata_label_max_values": _integer(1, 10_000),
    "trace_store_max_spans": _integer(100, 100_000_000),
    "trace_store_max_age_hours": _number(0.01, 24 * 3650),
}
_STORE: dict[str, Check] = {
    "database_url_env": _string(_ENV_NAME, "an environment variable name"),
    "encryption_key_env": _string(_ENV_NAME, "an environment variable name"),
    "heartbeat_seconds": _number(0.1, 60),
    "replica_forget_seconds": _number(1, 7 * 86400),
}
_ROUTE: dict[str, Check] = {
    "provider": _string(re.compile("|".join(PROVIDERS)), "one of " + ", ".join(PROVIDERS)),
    "model": _string(re.compile(r"\S.{0,255}"), "a non-empty upstream model name"),
    "base_url": _url,
    "api_key_env": _string(_ENV_NAME, "an environment variable name"),
    "timeout_seconds": _number(0.1, 3600),
    "price_input_per_mtok": _number(0, 1_000_000),
    "price_output_per_mtok": _number(0, 1_000_000),
    "latency_ms": _number(0, 600_000),
    "token_delay_ms": _number(0, 60_000),
}


def _section(
    table: Any, path: str, schema: dict[str, Check], problems: list[tuple[str, str]]
) -> dict[str, Any]:
    if not isinstance(table, dict):
        problems.append((path, "must be a table"))
        return {}
    good: dict[str, Any] = {}
    for key, value in table.items():
        check = schema.get(key)
        if check is None:
            problems.append((f"{path}.{key}", f"unknown key; expected one of {', '.join(schema)}"))
        elif (problem := check(value)) is not None:
            problems.append((f"{path}.{key}", problem))
        else:
            good[key] = value
    return good


def _route(name: str, table: Any, problems: list[tuple[str, str]]) -> RouteConfig | None:
    path = f"routes.{name}"
    if not _ROUTE_NAME.fullmatch(name):
        problems.append((path, "route names are 1-128 of A-Z a-z 0-9 . _ : / - (no spaces)"))
    before = len(problems)
    values = _section(table, path, _ROUTE, problems)
    # Keys given but invalid were reported by _section; "required" is only for absent ones.
    given = table.keys() if isinstance(table, dict) else set()
    provider = values.get("provider")
    if "provider" not in given:
        problems.append((f"{path}.provider", "required; one of " + ", ".join(PROVIDERS)))
    if provider == "openai":
        problems += [
            (f"{path}.{key}", "required for provider openai")
            for key in ("model", "base_url")
            if key not in given
        ]
        problems += [
            (f"{path}.{key}", "only for provider echo")
            for key in ("latency_ms", "token_delay_ms")
            if key in values
        ]
    if provider == "echo":
        problems += [
            (f"{path}.{key}", "not used by provider echo")
            for key in ("base_url", "api_key_env")
            if key in values
        ]
    if len(problems) > before or provider is None:
        return None
    values.setdefault("model", "echo-1")
    if "base_url" in values:
        values["base_url"] = values["base_url"].rstrip("/")
    return RouteConfig(name=name, **values)


def load_config(path: Path | None) -> GatewayConfig:
    """The config in `path`, or the built-in defaults (one `echo` route) when `path` is None."""
    if path is None:
        return GatewayConfig()
    source = str(path)
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(source, [("<file>", "no such file")]) from None
    except PermissionError:
        raise ConfigError(source, [("<file>", "permission denied")]) from None
    except IsADirectoryError:
        raise ConfigError(source, [("<file>", "is a directory, not a file")]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, [("<syntax>", str(e))]) from None
    except UnicodeDecodeError:
        raise ConfigError(source, [("<file>", "not UTF-8 text")]) from None

    problems: list[tuple[str, str]] = []
    for key in doc:
        if key not in ("server", "telemetry", "store", "routes"):
            problems.append((key, "unknown section; expected server, telemetry, store or routes"))
    server = _section(doc.get("server", {}), "server", _SERVER, problems)
    if not any(key in (f"server.{k}" for k in _TLS_KEYS) for key, _ in problems):
        # The files once every TLS key given is a usable string: read, parsed, key matched.
        from gateway.tls import check_files

        for key in _TLS_KEYS:
            if key in server:
                server[key] = Path(server[key]).expanduser()
        problems += check_files(
            server.get("tls_cert_file"), server.get("tls_key_file"), server.get("client_ca_file")
        )
    telemetry = _section(doc.get("telemetry", {}), "telemetry", _TELEMETRY, problems)
    store = _section(doc.get("store", {}), "store", _STORE, problems)
    routes_table = doc.get("routes", None)
    routes: dict[str, RouteConfig] = {}
    if routes_table is None:
        routes = dict(DEFAULT_ROUTES)
    elif not isinstance(routes_table, dict) or not routes_table:
        problems.append(("routes", "must be a table with at least one [routes.NAME]"))
    else:
        for name, table in routes_table.items():
            route = _route(name, table, problems)
            if route is not None:
                routes[name] = route
    if problems:
        raise ConfigError(source, problems)
    if "state_dir" in server:
        server["state_dir"] = Path(server["state_dir"]).expanduser()
    if "metadata_labels" in telemetry:
        telemetry["metadata_labels"] = tuple(telemetry["metadata_labels"])
    return GatewayConfig(
        server=ServerConfig(**server),
        telemetry=TelemetryConfig(**telemetry),
        store=StoreConfig(**store),
        routes=routes,
        source=source,
    )
