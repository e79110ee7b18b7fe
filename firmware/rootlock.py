"""One process at a time owns a device root: the daemon while it runs, or a technician's tool.

``acquire(root)`` takes an exclusive ``flock`` on ``ROOT/state/root.lock`` without waiting,
and raises ``RootInUse`` (one line: the root is in use, by which pid) if another process
holds it. Two daemons on one root would both append to the audit log, seal segments with
the same sequence numbers and answer the same dock. The lock dies with its process (even
by SIGKILL or a power cut), so a crash never leaves the root locked; the pid written into
the file is only for the message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "root.lock"


class RootLockError(Exception):
    """The device root cannot be locked (it does not exist, or another process holds it)."""

    exit_code = 1


class RootInUse(RootLockError):
    """Another process (normally the running device daemon) holds the device root."""


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
    """Lock ``root`` for this process, or raise RootInUse at once (RootLockError if it does not exist)."""
    if not Path(root).is_dir():
        error = RootLockError(f"device root {root} does not exist")
        error.exit_code = 2  # a missing input path is bad usage
        raise error
    path = Path(root) / "state" / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise RootInUse(f"device root {root} is in use by pid {holder} (the device daemon is running); "
                        "stop it first") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return RootLock(fd, path)


__all__ = ["LOCK_NAME", "RootInUse", "RootLock", "RootLockError", "acquire"]
