"""One process at a time owns a device root: the daemon while it runs, or a technician's tool.

``acquire(root)`` takes an exclusive ``flock`` on ``ROOT/state/root.lock`` without waiting,
and raises ``RootInUse`` (one line: the root is in use) if another process holds it. The lock
dies with its process, so a crash never leaves the root locked.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "root.lock"


class RootInUse(Exception):
    """Another process (normally the running device daemon) holds the device root."""

    exit_code = 1


class RootLock:
    """A held lock on a device root; ``release()`` (or process exit) frees it."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd, self.path = fd, path

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "RootLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(root: str | Path) -> RootLock:
    """Lock ``root`` for this process, or raise RootInUse at once."""
    path = Path(root) / "state" / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RootInUse(f"device root {root} is in use (the device daemon is running); stop it first") from None
    return RootLock(fd, path)
