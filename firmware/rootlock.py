"""One process at a time owns a device root: the daemon while it runs, or a technician's tool.

``acquire(root)`` takes an exclusive ``flock`` on ``ROOT/state/root.lock`` without waiting,
and raises ``RootInUse`` (one line: the root is in use, by which pid) if another process
holds it. Two daemons on one root would both append to the audit log, seal segments with
the same sequence numbers and answer the same dock. The lock dies with its process (even
by SIGKILL or a power cut), so a crash never leaves the root locked. The holder's pid comes
from /proc/locks: nothing is written into the root by a refused attempt.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "root.lock"


class RootLockError(Exception):
    """The device root cannot be locked."""

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
    """Lock ``root`` for this process, or raise RootInUse at once, naming the holder's pid."""
    path = Path(root) / "state" / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(os.fstat(fd).st_ino)
        os.close(fd)
        raise RootInUse(f"device root {root} is in use by pid {holder} (the device daemon is running); "
                        "stop it first") from None
    return RootLock(fd, path)


def holder(root: str | Path) -> str:
    """The pid holding ``root``'s lock, or "" if nobody holds it (or the lock file is not there)."""
    try:
        inode = (Path(root) / "state" / LOCK_NAME).stat().st_ino
    except OSError:
        return ""
    found = _holder(inode)
    return "" if found == "unknown" else found


def _holder(inode: int) -> str:
    """The pid holding a flock on the file with ``inode``, from /proc/locks (nothing is written to the root)."""
    try:
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
                    return fields[4]
    except OSError:
        pass
    return "unknown"


__all__ = ["LOCK_NAME", "RootInUse", "RootLock", "RootLockError", "acquire", "holder"]
