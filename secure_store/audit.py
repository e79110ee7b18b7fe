"""The device's audit log: append-only, hash-chained, every entry signed with the device key.

Every decision the device takes (boot, record, marker, dock, offload, release, firmware,
clock, power recovery, storage full ...) is one entry. Each entry carries its sequence
number and the SHA-256 of the previous entry and is signed on its own (Ed25519, well under a millisecond;
a hybrid device key adds ML-DSA-65 and writes version-2 entries), so
anyone with the device *public* key can prove that every entry present is authentic and
that none was altered, removed from the middle, reordered or spliced in from elsewhere.
Removing the newest entries cannot be seen from the log alone; :meth:`AuditLog.head`
gives the (seq, digest) a dock records at each offload, and ``audit_verify.verify_audit(anchor=...)``
checks a log against such a head. docs/FORMAT.md ("Audit log") specifies the bytes.

Layout: ``DIR/audit-<seq of its first entry, 12 digits>.log``; a file starts with the
header line ``{"format":"bodycam-audit","version":1}`` and holds one entry per line.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secure_store import hybrid
from secure_store.audit_format import (
    DEFAULT_FILE_BYTES, HEADER, HYBRID_VERSION, MAX_LINE_BYTES, SIGNATURE_CONTEXT, VERSION, ZERO_DIGEST, EVENT_RE,
    AuditEntry, AuditHead, Event, audit_files, canonical_json, format_line, parse_line,
    read_audit_file, read_entries, signature_ok, utc_text,
)
from secure_store.audit_format import monotonic_us as default_monotonic_us
from secure_store.durable import write_atomic
from secure_store.errors import AuditError

log = logging.getLogger(__name__)


class AuditLog:
    """Append signed, chained entries to the audit directory; each is on disk when append returns.

    Thread-safe, and safe against a second writer on the same directory (flock). At start-up
    a torn last line left by a power cut is dropped and logged as ``power_recovery``.
    """

    def __init__(self, directory: Path, signing_key: "Ed25519PrivateKey | hybrid.SigningKey", device_id: str, *,
                 clock: Callable[[], float] = time.time, monotonic_us: Callable[[], int] = default_monotonic_us,
                 max_file_bytes: int = DEFAULT_FILE_BYTES) -> None:
        if not isinstance(signing_key, (Ed25519PrivateKey, hybrid.SigningKey)):
            raise AuditError("the audit log needs the device's signing key (Ed25519, or Ed25519 + ML-DSA-65)")
        if not isinstance(device_id, str) or not device_id:
            raise AuditError(f"the audit log needs a device ID, not {device_id!r}")
        self.directory = Path(directory)
        self.device_id = device_id
        self._key = hybrid.as_signing_key(signing_key)
        self._version = HYBRID_VERSION if self._key.hybrid else VERSION
        self._clock, self._monotonic_us = clock, monotonic_us
        self._max_file_bytes = max_file_bytes
        self._lock = threading.Lock()
        self._file: Path | None = None
        self._size = -1
        self._head = AuditHead(-1, ZERO_DIGEST)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.append_many([])  # recover a torn tail now, not at the first event

    def head(self) -> AuditHead:
        """(seq, digest) of the newest entry."""
        with self._lock:
            return self._head

    def append(self, event: str, /, **details: Any) -> None:
        """Sign and durably append one entry (fsync'd before this returns)."""
        self.append_many([(event, details)])

    def append_many(self, events: list[tuple[str, dict]]) -> None:
        """Append several entries under one lock, in order."""
        for event, details in events:
            if not isinstance(event, str) or not EVENT_RE.fullmatch(event):
                raise AuditError(f"bad audit event name {event!r}")
        with self._lock, self._dir_locked():
            dropped = self._sync()
            if dropped:
                self._append_locked(Event.POWER_RECOVERY, dropped)
            for event, details in events:
                self._append_locked(event, details)

    @contextlib.contextmanager
    def _dir_locked(self) -> Iterator[None]:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _sync(self) -> dict | None:
        """Re-read the head if the newest file is not as we left it; recover a torn tail."""
        files = audit_files(self.directory)
        if not files:
            self._file, self._size, self._head = None, -1, AuditHead(-1, ZERO_DIGEST)
            return None
        path = files[-1][1]
        if path == self._file and path.stat().st_size == self._size:
            return None
        lines, tail = read_audit_file(path)
        dropped = None
        if tail:
            dropped = self._recover_tail(path, lines, tail)
        if lines:
            entry, _, _ = parse_line(lines[-1], path.name, len(lines) + 1)
            self._head = AuditHead(entry.seq, entry.digest)
        elif len(files) > 1:
            raise AuditError(f"{path.name} holds no entries; refusing to guess the chain head")
        else:
            self._head = AuditHead(-1, ZERO_DIGEST)
        self._file, self._size = path, path.stat().st_size
        return dropped

    def _recover_tail(self, path: Path, lines: list[bytes], tail: bytes) -> dict | None:
        """A power cut tore the last line: keep it if it is whole and ours, else drop it."""
        try:
            _, body, sig = parse_line(tail, path.name, len(lines) + 2)
            whole = signature_ok(self._key.public_key(), body, sig)
        except AuditError:
            whole = False
        with open(path, "r+b") as f:
            if whole:
                f.seek(0, os.SEEK_END)
                f.write(b"\n")  # the write stopped just short of the line feed
                lines.append(tail)
            else:
                f.truncate(os.path.getsize(path) - len(tail))
            f.flush()
            os.fsync(f.fileno())
        if whole:
            log.warning("audit log %s: completed a whole last entry that lacked its line feed", path.name)
            return None
        log.warning("audit log %s: dropped a torn last entry of %d bytes", path.name, len(tail))
        return {"what": "audit_log", "file": path.name, "dropped_bytes": len(tail),
                "dropped_sha256": hashlib.sha256(tail).hexdigest()}

    def _append_locked(self, event: str, details: dict) -> None:
        seq = self._head.seq + 1
        body_obj = {"v": self._version, "seq": seq, "device": self.device_id, "utc": utc_text(self._clock()),
                    "mono_us": self._monotonic_us(), "event": event, "details": details,
                    "prev": self._head.digest}
        try:
            body = canonical_json(body_obj)
        except (TypeError, ValueError) as exc:
            raise AuditError(f"audit details for {event!r} are not JSON-serialisable: {exc}") from None
        line = format_line(body, self._key.sign(SIGNATURE_CONTEXT + body))
        if len(line) > MAX_LINE_BYTES:
            raise AuditError(f"audit entry for {event!r} is longer than {MAX_LINE_BYTES} bytes")
        record = line + b"\n"
        if self._file is None or self._size + len(record) > self._max_file_bytes:
            path = self.directory / f"audit-{seq:012d}.log"
            try:
                write_atomic(path, HEADER + record, 0o644, overwrite=False)
            except OSError as exc:
                raise AuditError(f"cannot write audit log {path.name}: {exc.strerror or exc}") from None
            self._file, self._size = path, len(HEADER) + len(record)
        else:
            self._append_bytes(self._file, record)
            self._size += len(record)
        self._head = AuditHead(seq, hashlib.sha256(line).hexdigest())

    def _append_bytes(self, path: Path, record: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            view = memoryview(record)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as exc:
            os.ftruncate(fd, self._size)  # no torn line left behind, e.g. on a full disk
            raise AuditError(f"cannot append to audit log {path.name}: {exc.strerror}") from None
        finally:
            os.close(fd)


__all__ = ["AuditEntry", "AuditError", "AuditHead", "AuditLog", "Event", "read_entries"]
