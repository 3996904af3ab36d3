"""The state directory's permissions: owner-only, as the README promises.

The state directory holds the trace store (span attributes carry request metadata, and prompts
when content capture is on) and the OTEL config (exporter credentials), so it is 0700 and its
files 0600. `private_dir` is the one place that makes it so; the gateway, the trace store and
the config store all call it:

- directories it creates (the state directory and any missing parents) are 0700 whatever the
  umask: `mkdir(parents=True, mode=0o700)` gives missing *parents* 0777 & ~umask (0777 under
  umask 000), and mkdir's own mode is filtered by the umask too, so each one is chmod-ed;
- an existing state directory we own with group or other bits set is tightened to 0700, with
  one INFO line; one another user owns is left as it is, with one WARNING;
- existing parents are never touched (they may be shared, e.g. /var/lib).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
from pathlib import Path

__all__ = ["MODE", "private_dir"]

_log = logging.getLogger(__name__)

MODE = 0o700
_warned: set[Path] = set()
_warned_lock = threading.Lock()


def private_dir(directory: Path) -> Path:
    """Make `directory` exist and be owner-only; answers it. OSError when it cannot."""
    missing: list[Path] = []
    d = directory
    while not d.exists():
        missing.append(d)
        if d.parent == d:
            break
        d = d.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=MODE)
        except FileExistsError:
            continue  # made meanwhile by someone else (another replica, a concurrent start)
        # mkdir's mode is filtered by the umask; make it exact. Never wider before this line.
        os.chmod(d, MODE)
    _tighten(directory)
    return directory


def _tighten(directory: Path) -> None:
    st = os.stat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"{directory}: not a directory")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077 == 0:
        return
    if st.st_uid != os.geteuid():
        with _warned_lock:
            if directory in _warned:
                return
            _warned.add(directory)
        _log.warning(
            "state directory %s is %04o and owned by uid %d, not us (uid %d): left as it is; "
            "it should be 0700",
            directory,
            mode,
            st.st_uid,
            os.geteuid(),
        )
        return
    with contextlib.suppress(FileNotFoundError):
        os.chmod(directory, MODE)
        _log.info("state directory %s was %04o; now 0700 (owner only)", directory, mode)
