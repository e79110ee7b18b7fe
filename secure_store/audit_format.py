"""The audit log's format, shared by its writer (``audit``) and its verifier (``audit_verify``).

Constants, event names, the entry envelope and its parser, file discovery and reading:
everything both sides need, so neither imports the other. docs/FORMAT.md ("Audit log")
specifies the bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from secure_store import hybrid, signed_line, strict_json
from secure_store.errors import AuditError
from secure_store.sources import as_path, listdir

VERSION = 1         # an entry signed by a classic (Ed25519) device key
HYBRID_VERSION = 2  # an entry signed by a hybrid (Ed25519 + ML-DSA-65) device key
HEADER = b'{"format":"bodycam-audit","version":1}\n'
SIGNATURE_CONTEXT = b"bodycam-audit-v1\x00"
ZERO_DIGEST = "0" * 64
MAX_LINE_BYTES = 64 * 1024
DEFAULT_FILE_BYTES = 1024 * 1024
MAX_READ_BYTES = 64 * 1024 * 1024  # a reader refuses a file larger than any writer makes

BODY_PREFIX, SIG_PREFIX, SUFFIX = signed_line.BODY_PREFIX, signed_line.SIG_PREFIX, signed_line.SUFFIX
_FILE_RE = re.compile(r"audit-(\d{12})\.log")
EVENT_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_BODY_KEYS = {"v", "seq", "device", "utc", "mono_us", "event", "details", "prev"}
FLOAT_FIELDS = frozenset({"details"})  # early firmware wrote clock values as JSON fractions there
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_UTC_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
_STEM_RE = re.compile(r"seg-[0-9]{10}")


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
    RECORD_REFUSED = "record_refused"
    FIRMWARE_UPLOAD = "firmware_upload"
    FIRMWARE_BOOT = "firmware_boot"
    FIRMWARE_STATE_REBUILT = "firmware_state_rebuilt"
    CRL_INSTALLED = "crl_installed"


# The complete list of version-1 event names (FORMAT.md, "Events"). A name outside it that
# matches EVENT_RE is accepted with a warning: later firmware may log more kinds of decision.
KNOWN_EVENTS = frozenset(v for k, v in vars(Event).items() if k.isupper())


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
    version: int = VERSION  # 2: signed by a hybrid key (Ed25519 + ML-DSA-65)


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, ASCII only (non-ASCII as \\uXXXX), no NaN."""
    return strict_json.dumps(obj)


def utc_text(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def monotonic_us() -> int:
    return time.monotonic_ns() // 1000


def split_line(line: bytes, where: str) -> tuple[bytes, hybrid.Signatures]:
    """(body bytes, signatures) of one line, checked against the fixed envelopes (``signed_line``).

    Version 1 has the Ed25519 signature only, version 2 (hybrid) also ``sig_mldsa65``;
    :func:`parse_line` then requires the body's ``v`` to match the envelope.
    """
    if len(line) > MAX_LINE_BYTES:
        raise AuditError(f"{where}: entry longer than {MAX_LINE_BYTES} bytes")
    try:
        return signed_line.split(line)
    except signed_line.EnvelopeError as exc:
        reason = "not an audit entry (bad envelope)" if str(exc) == "bad envelope" else str(exc)
        raise AuditError(f"{where}: {reason}") from None


def parse_line(line: bytes, file: str, lineno: int) -> tuple[AuditEntry, bytes, hybrid.Signatures]:
    """Parse one line (without its LF) into an entry, its signed body and its signature(s).

    The one strict reader of entry bodies (FORMAT.md, "Entry line" and "Canonical JSON"):
    the verifier, the exporter and the writer's recovery all read entries through it.
    """
    where = f"{file} line {lineno}"
    body, sig = split_line(line, where)
    try:
        obj = strict_json.loads(body, floats_in=FLOAT_FIELDS)
    except strict_json.StrictJSONError as exc:
        raise AuditError(f"{where}: entry body is not canonical JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise AuditError(f"{where}: entry body is not a JSON object")
    if "v" in obj and (type(obj["v"]) is not int or obj["v"] not in (VERSION, HYBRID_VERSION)):
        raise AuditError(f"{where}: unknown audit entry version {obj['v']!r}")
    if "v" in obj and (obj["v"] == HYBRID_VERSION) != (sig.mldsa65 is not None):
        raise AuditError(f"{where}: a version-{obj['v']} entry " + (
            "without its ML-DSA-65 signature (sig_mldsa65)" if sig.mldsa65 is None
            else "with an ML-DSA-65 signature (only version 2 carries sig_mldsa65)"))
    if set(obj) != _BODY_KEYS:
        raise AuditError(f"{where}: entry fields {sorted(obj)} are not {sorted(_BODY_KEYS)}")
    for k in ("seq", "mono_us"):
        if type(obj[k]) is not int or obj[k] < 0:
            raise AuditError(f"{where}: {k} is not an integer >= 0")
    for k in ("device", "utc", "event", "prev"):
        if not isinstance(obj[k], str):
            raise AuditError(f"{where}: {k} is not a string")
    if not isinstance(obj["details"], dict):
        raise AuditError(f"{where}: details is not an object")
    if not _HEX64_RE.fullmatch(obj["prev"]):
        raise AuditError(f"{where}: prev is not 64 lowercase hex digits")
    if not EVENT_RE.fullmatch(obj["event"]):
        raise AuditError(f"{where}: event name {obj['event']!r} is not [a-z][a-z0-9_]{{0,63}}")
    if not valid_utc(obj["utc"]):
        raise AuditError(f"{where}: utc {obj['utc']!r} is not a UTC time YYYY-MM-DDTHH:MM:SS.ffffffZ")
    raw_id = obj["device"].encode("utf-8")
    if not 1 <= len(raw_id) <= 64 or any(ord(c) < 0x20 or ord(c) == 0x7F for c in obj["device"]):
        raise AuditError(f"{where}: device is not 1-64 bytes without control characters")
    problem = details_problem(obj["event"], obj["details"])
    if problem:
        raise AuditError(f"{where}: {obj['event']} entry {problem}")
    entry = AuditEntry(obj["seq"], obj["event"], obj["details"], obj["device"], obj["utc"], obj["mono_us"],
                       obj["prev"], hashlib.sha256(line).hexdigest(), file, lineno, obj["v"])
    return entry, body, sig


def valid_utc(text: str) -> bool:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ``, a real date and time (no leap second)."""
    if not _UTC_RE.fullmatch(text):
        return False
    try:
        dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return False
    return True


def details_problem(event: str, details: dict) -> str | None:
    """What is wrong with the details the verifier relies on (FORMAT.md, "Events"), or None."""
    if event == Event.SEGMENT_SEALED or event == Event.DELETE:
        seg = details.get("segment")
        if not (isinstance(seg, str) and _STEM_RE.fullmatch(seg)):
            return "lacks segment (seg- and 10 digits)"
        if not (isinstance(details.get("manifest_sha256"), str) and _HEX64_RE.fullmatch(details["manifest_sha256"])):
            return "lacks manifest_sha256 (64 lowercase hex digits)"
        if event == Event.SEGMENT_SEALED:
            seq = details.get("seq")
            if type(seq) is not int or seq < 1 or f"seg-{seq:010d}" != seg:
                return "has a seq that is not the segment's number"
    elif event == Event.PROVISION and details.get("action") == "reprovision_begin":
        if not (isinstance(details.get("device_key"), str) and _HEX64_RE.fullmatch(details["device_key"])):
            return "hands over to a device_key that is not 64 lowercase hex digits"
        if not isinstance(details.get("device_id"), str) or not details["device_id"]:
            return "hands over to no device_id"
    return None


def audit_files(directory: Path) -> list[tuple[int, Path]]:
    """Audit files in order of their first entry; other names are ignored."""
    try:
        names = listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [(int(m.group(1)), as_path(directory) / n) for n in names if (m := _FILE_RE.fullmatch(n))]
    return sorted(found)


def read_audit_file(path: Path) -> tuple[list[bytes], bytes]:
    """The complete lines after the header, and any torn tail (bytes after the last LF)."""
    try:
        with as_path(path).open("rb") as f:
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


def format_line(body: bytes, signatures: hybrid.Signatures) -> bytes:
    """The entry line (without LF): the version-1 envelope, or version 2 with an ML-DSA-65 signature."""
    return signed_line.join(body, signatures)


def signature_problem(key: "hybrid.VerifyKey | Ed25519PublicKey", body: bytes,
                      signatures: hybrid.Signatures) -> str | None:
    """Why ``signatures`` over ``body`` do not verify with ``key`` (FORMAT.md, L4), or None when they do.

    Both halves must verify; a hybrid key's entry without ML-DSA-65 is a downgrade, and an
    ML-DSA-65 signature under a key without that half is one nobody can check: both fail.
    """
    key = hybrid.as_verify_key(key)
    message = SIGNATURE_CONTEXT + body
    try:
        key.ed25519.verify(signatures.ed25519, message)
    except InvalidSignature:
        return "bad signature (altered, or not signed by this device's key)"
    if key.mldsa65 is None:
        return None if signatures.mldsa65 is None else "hybrid entry, but no ML-DSA-65 key to check it"
    if signatures.mldsa65 is None:
        return "classic-only signature from a hybrid key (ML-DSA-65 signature missing)"
    try:
        key.mldsa65.verify(signatures.mldsa65, message)
    except InvalidSignature:
        return "bad ML-DSA-65 signature (altered, or not signed by this device's key)"
    return None


def signature_ok(key: "hybrid.VerifyKey | Ed25519PublicKey", body: bytes, sig: "hybrid.Signatures | bytes") -> bool:
    """True when every signature the key calls for is present and valid (a plain ``sig`` is Ed25519 only)."""
    if isinstance(sig, bytes):
        sig = hybrid.Signatures(sig)
    return signature_problem(key, body, sig) is None


def read_entries(directory: Path) -> list[AuditEntry]:
    """All entries in file order, for tools; a torn last line is skipped. Raises AuditError."""
    entries: list[AuditEntry] = []
    files = audit_files(as_path(directory))
    for i, (_, path) in enumerate(files):
        lines, tail = read_audit_file(path)
        if tail and i < len(files) - 1:
            raise AuditError(f"{path.name}: garbage after the last entry")
        entries.extend(parse_line(line, path.name, n)[0] for n, line in enumerate(lines, start=2))
    return entries
