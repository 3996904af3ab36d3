"""What every process of a gateway does first, and how a failed start is told to the supervisor.

A child process ignores SIGINT (a Ctrl-C reaches the whole process group; the supervisor alone
decides the order of the shutdown), dies with the supervisor (`PR_SET_PDEATHSIG`: a `kill -9`
of `aigw serve` takes the whole gateway down, as it did when it was one process), logs like
it, and redacts the same secrets.

A child reports over its pipe, once: `("ready", info)` or `("failed", exit_code, message)`.
`start_failure` is the one mapping from what can stop a start to the exit code and message
`aigw serve` prints.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
from multiprocessing.connection import Connection

__all__ = ["prepare_child", "report_failure", "start_failure"]

_PR_SET_PDEATHSIG = 1
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    from gateway.redaction import install

    install()


def prepare_child(log_level: str, supervisor_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the supervisor's shutdown still stops us
        pass
    if os.getppid() != supervisor_pid:  # the supervisor died before the line above
        os._exit(1)
    configure_logging(log_level)


def start_failure(error: BaseException) -> tuple[int, str] | None:
    """(exit code, message) for an error that stops a start; None for a bug (re-raise it)."""
    from admin.config_store import ConfigStoreError
    from admin.otel_config import InvalidConfig
    from gateway.backends import BackendError
    from gateway.telemetry.trace_store import TraceStoreError

    if isinstance(error, (ConfigStoreError, TraceStoreError, BackendError)):
        return 2, f"cannot start: {error}"
    if isinstance(error, InvalidConfig):
        return 2, f"cannot start: invalid OTEL environment: {error}"
    if isinstance(error, OSError):
        return 1, f"cannot start: {error}"
    return None


def report_failure(conn: Connection, error: BaseException) -> None:
    """Tell the supervisor why the process failed (a bug is logged here with its traceback)."""
    failure = start_failure(error)
    if failure is None:
        logging.getLogger(__name__).exception("process failed")
        failure = (1, f"cannot start: {type(error).__name__}: {error}")
    with contextlib.suppress(OSError):  # the supervisor stopped listening: nothing to tell
        conn.send(("failed", *failure))
