"""Disk space set aside so that a recording can always be closed, even on a full disk.

Checking free space before each write is not enough: another writer (system logs, a
filling /var, an update) can take the last blocks between the check and the write, and
then the manifest, the chain head or the audit entry that closes a recording fails with
ENOSPC and the segment stays unsealed. So the store keeps a *sealing reserve*: a real
file of preallocated blocks (``posix_fallocate``) under ``state/``. When a write that
closes evidence, or says what happened, fails for lack of space, the reserve's blocks
go back to the file system and the write is tried once more. Without its reserve the
store counts as full (no new recording starts) until the reserve can be made again,
which the dock makes possible by freeing offloaded segments.

Audit entries that cannot be written even then are kept in memory, in order, and
written (marked ``deferred``) with the next entry that fits: a boot never stops on them.
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, TypeVar

from secure_store.durable import fsync_dir

log = logging.getLogger(__name__)

RESERVE_FILE = "sealing-reserve"
DEFAULT_RESERVE_BYTES = 1024 * 1024  # a manifest of 3600 chunks (~120 KB), chain head, audit entries, blocks
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

T = TypeVar("T")


def is_no_space(exc: BaseException | None) -> bool:
    """True if ``exc`` (or an error it was raised from) is a file system out of space."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class SealingReserve:
    """A file of ``size`` preallocated bytes, given back when sealing runs out of space."""

    def __init__(self, path: str | Path, size: int = DEFAULT_RESERVE_BYTES) -> None:
        self.path = Path(path)
        self.size = size
        self._lock = threading.Lock()

    @property
    def held(self) -> bool:
        """Whether the reserve is on disk, whole."""
        try:
            return self.path.stat().st_size >= self.size
        except OSError:
            return False

    def ensure(self) -> bool:
        """Make the reserve if it is missing; False when the disk has no room for it."""
        with self._lock:
            if self.held:
                return True
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
                try:
                    os.posix_fallocate(fd, 0, self.size)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                fsync_dir(self.path.parent)
            except OSError as exc:
                self.path.unlink(missing_ok=True)  # half a reserve is no reserve
                if not is_no_space(exc) and exc.errno != errno.EROFS:
                    raise
                return False
            log.info("sealing reserve of %d bytes made in %s", self.size, self.path)
            return True

    def release(self) -> bool:
        """Give the reserve's blocks back to the file system; False if there was none."""
        with self._lock:
            try:
                self.path.unlink()
            except FileNotFoundError:
                return False
            fsync_dir(self.path.parent)
        log.warning("disk full: sealing reserve released (%d bytes) to close evidence", self.size)
        return True

    def run(self, action: Callable[[], T]) -> T:
        """``action()``; if it fails for lack of space, release the reserve and try once more."""
        try:
            return action()
        except Exception as exc:
            if not is_no_space(exc) or not self.release():
                raise
        return action()


class ReservedAudit:
    """An audit log whose appends draw on the sealing reserve and never fail for lack of space.

    Wraps :class:`secure_store.audit.AuditLog` (everything else is passed through).
    """

    def __init__(self, audit: Any, reserve: SealingReserve) -> None:
        self._audit = audit
        self._reserve = reserve
        self._pending: list[tuple[str, dict]] = []
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Entries waiting for room on the disk."""
        return len(self._pending)

    def append(self, event: str, /, **details: Any) -> None:
        self.append_many([(event, details)])

    def flush(self) -> None:
        """Write the entries kept in memory, if there is room now (after space was freed)."""
        if self._pending:
            self.append_many([])

    def append_many(self, events: list[tuple[str, dict]]) -> None:
        """Write waiting entries, then these, one at a time (so a retry never doubles one)."""
        with self._lock:
            queue = [(event, details, True) for event, details in self._pending]
            queue += [(event, details, False) for event, details in events]
            while queue:
                event, details, deferred = queue[0]
                try:
                    self._reserve.run(lambda: self._audit.append(event, **details))
                except Exception as exc:
                    if not is_no_space(exc):
                        raise
                    utc = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                    self._pending = [(e, d if was else {**d, "deferred": True, "happened_utc": utc})
                                     for e, d, was in queue]
                    log.error("disk full: %d audit entries kept in memory until there is room", len(queue))
                    return
                queue.pop(0)
            self._pending = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._audit, name)
