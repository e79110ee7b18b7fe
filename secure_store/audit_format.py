"""The audit log's format, shared by its writer (``audit``) and its verifier (``audit_verify``).

Constants, event names, the entry envelope and its parser, file discovery and reading:
everything both sides need, so neither imports the other. docs/FORMAT.md ("Audit log")
specifies the bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from secure_store.errors import AuditError

VERSION = 1
HEADER = b'{"format":"bodycam-audit","version":1}\n'
SIGNATURE_CONTEXT = b"bodycam-audit-v1\x00"
ZERO_DIGEST = "0" * 64
MAX_LINE_BYTES = 64 * 1024
DEFAULT_FILE_BYTES = 1024 * 1024
MAX_READ_BYTES = 64 * 1024 * 1024  # a reader refuses a file larger than any writer makes

BODY_PREFIX = b'{"body":'
SIG_PREFIX = b',"sig":"'
SUFFIX = b'"}'
_SIG_TAIL = len(SIG_PREFIX) + 128 + len(SUFFIX)
_FILE_RE = re.compile(r"audit-(\d{12})\.log")
EVENT_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
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


def utc_text(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def monotonic_us() -> int:
    return time.monotonic_ns() // 1000


def split_line(line: bytes, where: str) -> tuple[bytes, bytes]:
    """(body bytes, signature) of one line, checked against the fixed envelope."""
    if len(line) > MAX_LINE_BYTES:
        raise AuditError(f"{where}: entry longer than {MAX_LINE_BYTES} bytes")
    if not (line.startswith(BODY_PREFIX) and line.endswith(SUFFIX) and len(line) >= len(BODY_PREFIX) + 2 + _SIG_TAIL
            and line[-_SIG_TAIL:-_SIG_TAIL + len(SIG_PREFIX)] == SIG_PREFIX):
        raise AuditError(f"{where}: not an audit entry (bad envelope)")
    sig_hex = line[-_SIG_TAIL + len(SIG_PREFIX):-len(SUFFIX)]
    if not _HEX_RE.fullmatch(sig_hex):
        raise AuditError(f"{where}: signature is not lowercase hex")
    return line[len(BODY_PREFIX):-_SIG_TAIL], bytes.fromhex(sig_hex.decode())


def parse_line(line: bytes, file: str, lineno: int) -> tuple[AuditEntry, bytes, bytes]:
    """Parse one line (without its LF) into an entry, its signed body and its signature."""
    where = f"{file} line {lineno}"
    body, sig = split_line(line, where)
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


def audit_files(directory: Path) -> list[tuple[int, Path]]:
    """Audit files in order of their first entry; other names are ignored."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [(int(m.group(1)), Path(directory) / n) for n in names if (m := _FILE_RE.fullmatch(n))]
    return sorted(found)


def read_audit_file(path: Path) -> tuple[list[bytes], bytes]:
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


def signature_ok(key: Ed25519PublicKey, body: bytes, sig: bytes) -> bool:
    try:
        key.verify(sig, SIGNATURE_CONTEXT + body)
        return True
    except InvalidSignature:
        return False


def read_entries(directory: Path) -> list[AuditEntry]:
    """All entries in file order, for tools; a torn last line is skipped. Raises AuditError."""
    entries: list[AuditEntry] = []
    files = audit_files(Path(directory))
    for i, (_, path) in enumerate(files):
        lines, tail = read_audit_file(path)
        if tail and i < len(files) - 1:
            raise AuditError(f"{path.name}: garbage after the last entry")
        entries.extend(parse_line(line, path.name, n)[0] for n, line in enumerate(lines, start=2))
    return entries
