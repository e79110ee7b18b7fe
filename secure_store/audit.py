"""The device's audit log: append-only, hash-chained, every entry signed with the device key.

Every decision the device takes (boot, record, marker, dock, offload, release, firmware,
clock, power recovery, storage full ...) is one entry. Each entry carries its sequence
number and the SHA-256 of the previous entry and is signed on its own (Ed25519, well under a millisecond), so
anyone with the device *public* key can prove that every entry present is authentic and
that none was altered, removed from the middle, reordered or spliced in from elsewhere.
Removing the newest entries cannot be seen from the log alone; :meth:`AuditLog.head`
gives the (seq, digest) a dock records at each offload, and ``verify_audit(anchor=...)``
checks a log against such a head. docs/FORMAT.md ("Audit log") specifies the bytes.

Layout: ``DIR/audit-<seq of its first entry, 12 digits>.log``; a file starts with the
header line ``{"format":"bodycam-audit","version":1}`` and holds one entry per line.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secure_store.durable import fsync_dir, write_atomic
from secure_store.errors import AuditError

log = logging.getLogger(__name__)

VERSION = 1
HEADER = b'{"format":"bodycam-audit","version":1}\n'
SIGNATURE_CONTEXT = b"bodycam-audit-v1\x00"
ZERO_DIGEST = "0" * 64
MAX_LINE_BYTES = 64 * 1024
DEFAULT_FILE_BYTES = 1024 * 1024
MAX_READ_BYTES = 64 * 1024 * 1024  # a reader refuses a file larger than any writer makes

_BODY_PREFIX = b'{"body":'
_SIG_PREFIX = b',"sig":"'
_SUFFIX = b'"}'
_SIG_TAIL = len(_SIG_PREFIX) + 128 + len(_SUFFIX)
_FILE_RE = re.compile(r"audit-(\d{12})\.log")
_EVENT_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_HEX_RE = re.compile(rb"[0-9a-f]+")
_BODY_KEYS = {"v", "seq", "device", "utc", "mono_us", "event", "details", "prev"}


class Event:
    """Names of audit events (any ``[a-z][a-z0-9_]*`` name is accepted; these are the usual ones)."""

    BOOT = "boot"
    SHUTDOWN = "shutdown"
    PROVISION = "provision"
    STATE_CHANGE = "state_change"
    BUFFER_START = "buffer_start"
    BUFFER_STOP = "buffer_stop"
    RECORD_START = "record_start"
    RECORD_STOP = "record_stop"
    SEGMENT_SEALED = "segment_sealed"
    MARKER = "marker"
    STEALTH_ON = "stealth_on"
    STEALTH_OFF = "stealth_off"
    DOCK_CONNECT = "dock_connect"
    DOCK_DISCONNECT = "dock_disconnect"
    DOCK_AUTH_FAILED = "dock_auth_failed"
    DOCK_ENROLLED = "dock_enrolled"
    OFFLOAD_START = "offload_start"
    OFFLOAD_CONFIRM = "offload_confirm"
    OFFLOAD_END = "offload_end"
    DELETE = "delete"  # evidence deleted by EvidenceStore.release after a confirmed offload
    RELEASE = DELETE
    RELEASE_REFUSED = "release_refused"
    FIRMWARE_INSTALL = "firmware_install"
    FIRMWARE_REJECTED = "firmware_rejected"
    FIRMWARE_ROLLBACK = "firmware_rollback"
    FIRMWARE_HEALTHY = "firmware_healthy"
    CLOCK_SET = "clock_set"
    CLOCK_SYNC = "clock_sync"
    POWER_RECOVERY = "power_recovery"
    STORAGE_NEARLY_FULL = "storage_nearly_full"
    STORAGE_FULL = "storage_full"
    BATTERY_LOW = "battery_low"
    FAULT = "fault"


class AuditHead(NamedTuple):
    """The newest entry: what a manifest or a dock records to pin the log's length."""

    seq: int  # -1 for an empty log
    digest: str  # hex SHA-256 of that entry's line; ZERO_DIGEST for an empty log


@dataclass(frozen=True)
class AuditEntry:
    """One parsed entry (signature not checked: use :func:`verify_audit` for trust)."""

    seq: int
    event: str
    details: dict
    device: str
    utc: str
    mono_us: int
    prev: str
    digest: str
    file: str
    line: int


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, ASCII only (non-ASCII as \\uXXXX), no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _monotonic_us() -> int:
    return time.monotonic_ns() // 1000


def _split_line(line: bytes, where: str) -> tuple[bytes, bytes]:
    """(body bytes, signature) of one line, checked against the fixed envelope."""
    if len(line) > MAX_LINE_BYTES:
        raise AuditError(f"{where}: entry longer than {MAX_LINE_BYTES} bytes")
    if not (line.startswith(_BODY_PREFIX) and line.endswith(_SUFFIX) and len(line) >= len(_BODY_PREFIX) + 2 + _SIG_TAIL
            and line[-_SIG_TAIL:-_SIG_TAIL + len(_SIG_PREFIX)] == _SIG_PREFIX):
        raise AuditError(f"{where}: not an audit entry (bad envelope)")
    sig_hex = line[-_SIG_TAIL + len(_SIG_PREFIX):-len(_SUFFIX)]
    if not _HEX_RE.fullmatch(sig_hex):
        raise AuditError(f"{where}: signature is not lowercase hex")
    return line[len(_BODY_PREFIX):-_SIG_TAIL], bytes.fromhex(sig_hex.decode())


def _parse_line(line: bytes, file: str, lineno: int) -> tuple[AuditEntry, bytes, bytes]:
    """Parse one line (without its LF) into an entry, its signed body and its signature."""
    where = f"{file} line {lineno}"
    body, sig = _split_line(line, where)
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        raise AuditError(f"{where}: entry body is not JSON") from None
    if not isinstance(obj, dict):
        raise AuditError(f"{where}: entry body is not a JSON object")
    if "v" in obj and obj["v"] != VERSION:
        raise AuditError(f"{where}: unknown audit entry version {obj['v']!r}")
    if set(obj) != _BODY_KEYS:
        raise AuditError(f"{where}: entry fields {sorted(obj)} are not {sorted(_BODY_KEYS)}")
    ints = all(type(obj[k]) is int and obj[k] >= 0 for k in ("seq", "mono_us"))
    strs = all(isinstance(obj[k], str) for k in ("device", "utc", "event", "prev"))
    if not (ints and strs and isinstance(obj["details"], dict) and re.fullmatch(r"[0-9a-f]{64}", obj["prev"])):
        raise AuditError(f"{where}: entry field of the wrong type")
    entry = AuditEntry(obj["seq"], obj["event"], obj["details"], obj["device"], obj["utc"], obj["mono_us"],
                       obj["prev"], hashlib.sha256(line).hexdigest(), file, lineno)
    return entry, body, sig


def _files(directory: Path) -> list[tuple[int, Path]]:
    """Audit files in order of their first entry; other names are ignored."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [(int(m.group(1)), Path(directory) / n) for n in names if (m := _FILE_RE.fullmatch(n))]
    return sorted(found)


def _read_file(path: Path) -> tuple[list[bytes], bytes]:
    """The complete lines after the header, and any torn tail (bytes after the last LF)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_READ_BYTES + 1)
    except OSError as exc:
        raise AuditError(f"{path.name}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_READ_BYTES:
        raise AuditError(f"{path.name}: larger than {MAX_READ_BYTES} bytes; not an audit log file")
    if not data.startswith(HEADER):
        first = data.split(b"\n", 1)[0]
        try:
            head = json.loads(first) if len(first) < 1024 else None
        except (ValueError, RecursionError):
            head = None
        if isinstance(head, dict) and head.get("format") == "bodycam-audit":
            raise AuditError(f"{path.name}: unknown audit format version {head.get('version')!r}")
        raise AuditError(f"{path.name}: not a bodycam audit log (bad header)")
    *lines, tail = data[len(HEADER):].split(b"\n")
    return lines, tail


def _sig_ok(key: Ed25519PublicKey, body: bytes, sig: bytes) -> bool:
    try:
        key.verify(sig, SIGNATURE_CONTEXT + body)
        return True
    except InvalidSignature:
        return False


class AuditLog:
    """Append signed, chained entries to the audit directory; each is on disk when append returns.

    Thread-safe, and safe against a second writer on the same directory (flock). At start-up
    a torn last line left by a power cut is dropped and logged as ``power_recovery``.
    """

    def __init__(self, directory: Path, signing_key: Ed25519PrivateKey, device_id: str, *,
                 clock: Callable[[], float] = time.time, monotonic_us: Callable[[], int] = _monotonic_us,
                 max_file_bytes: int = DEFAULT_FILE_BYTES) -> None:
        if not isinstance(signing_key, Ed25519PrivateKey):
            raise AuditError("the audit log needs the device's Ed25519 signing key")
        if not isinstance(device_id, str) or not device_id:
            raise AuditError(f"the audit log needs a device ID, not {device_id!r}")
        self.directory = Path(directory)
        self.device_id = device_id
        self._key = signing_key
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
            if not isinstance(event, str) or not _EVENT_RE.fullmatch(event):
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
        files = _files(self.directory)
        if not files:
            self._file, self._size, self._head = None, -1, AuditHead(-1, ZERO_DIGEST)
            return None
        path = files[-1][1]
        if path == self._file and path.stat().st_size == self._size:
            return None
        lines, tail = _read_file(path)
        dropped = None
        if tail:
            dropped = self._recover_tail(path, lines, tail)
        if lines:
            entry, _, _ = _parse_line(lines[-1], path.name, len(lines) + 1)
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
            _, body, sig = _parse_line(tail, path.name, len(lines) + 2)
            whole = _sig_ok(self._key.public_key(), body, sig)
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
        body_obj = {"v": VERSION, "seq": seq, "device": self.device_id, "utc": _utc(self._clock()),
                    "mono_us": self._monotonic_us(), "event": event, "details": details,
                    "prev": self._head.digest}
        try:
            body = canonical_json(body_obj)
        except (TypeError, ValueError) as exc:
            raise AuditError(f"audit details for {event!r} are not JSON-serialisable: {exc}") from None
        sig = self._key.sign(SIGNATURE_CONTEXT + body)
        line = _BODY_PREFIX + body + _SIG_PREFIX + sig.hex().encode() + _SUFFIX
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


def read_entries(directory: Path) -> list[AuditEntry]:
    """All entries in file order, for tools; a torn last line is skipped. Raises AuditError."""
    entries: list[AuditEntry] = []
    files = _files(Path(directory))
    for i, (_, path) in enumerate(files):
        lines, tail = _read_file(path)
        if tail and i < len(files) - 1:
            raise AuditError(f"{path.name}: garbage after the last entry")
        entries.extend(_parse_line(line, path.name, n)[0] for n, line in enumerate(lines, start=2))
    return entries


def verify_audit(directory: Path, device_public_key: Ed25519PublicKey | Iterable[Ed25519PublicKey], *,
                 device_id: str | None = None, anchor: AuditHead | None = None) -> list[str]:
    """Every problem with the audit log in ``directory``, one line each; [] when it verifies.

    ``device_public_key`` may be several keys (a retired key and its successor); ``anchor`` a
    head recorded earlier that the log must still reach. See :mod:`secure_store.audit_verify`.
    """
    from secure_store.audit_verify import verify_audit as verify  # its own module: it imports this one

    return verify(directory, device_public_key, device_id=device_id, anchor=anchor)
