"""Verify an audit log with the device public key(s) only: every problem, one line each.

Checks each file's header and version, each entry's envelope and signature, the device ID,
sequence numbers (missing, duplicated, out of order), the hash chain and, given an anchor
(a head recorded earlier), that the log still reaches it. docs/FORMAT.md ("Audit log").

A re-provisioned device changes key: its old key signs a hand-over entry (event
``provision``, details ``action="reprovision_begin"``, ``device_key`` = the new key's
fingerprint, ``device_id`` = the new ID) and every later entry is signed by the new key.
Given both keys (old first or in any order), the verifier follows the hand-over; an entry
signed by a key that is not the one in force at its place is a bad signature.

Keys may be hybrid (``hybrid.VerifyKey`` with an ML-DSA-65 half): then every entry under
that key must be a version-2 entry whose two signatures both verify; a classic entry under
a hybrid key, or a hybrid entry under a classic key, fails (rule L4). A classic key may
hand over to a hybrid one and the reverse: entries follow the key that signs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from secure_store import hybrid
from secure_store import keys as keyfiles
from secure_store.audit_format import SIGNATURE_CONTEXT, ZERO_DIGEST, AuditEntry, AuditHead, Event, audit_files, \
    parse_line, read_audit_file, signature_problem
from secure_store.errors import AuditError
from secure_store.sources import as_path

Parsed = tuple[AuditEntry, bytes, hybrid.Signatures]
AnyVerifyKey = "hybrid.VerifyKey | Ed25519PublicKey"


def trusted_verify_keys(keys: "AnyVerifyKey | Iterable[AnyVerifyKey]") -> list[hybrid.VerifyKey]:
    """The given keys as ``VerifyKey`` objects, one per Ed25519 key; if one is given both plain and
    hybrid, the hybrid form wins (its ML-DSA-65 half may never be dropped by a second copy)."""
    given = [keys] if isinstance(keys, (Ed25519PublicKey, hybrid.VerifyKey)) else list(keys)
    if not given or not all(isinstance(k, (Ed25519PublicKey, hybrid.VerifyKey)) for k in given):
        raise AuditError("verify_audit needs the device's public key(s) (Ed25519, or Ed25519 + ML-DSA-65)")
    by_fp: dict[str, hybrid.VerifyKey] = {}
    for key in map(hybrid.as_verify_key, given):
        fp = key.fingerprint()
        if fp not in by_fp or key.hybrid:
            by_fp[fp] = key
    return list(by_fp.values())


def verify_audit(directory: Path, device_public_key: "AnyVerifyKey | Iterable[AnyVerifyKey]", *,
                 device_id: str | None = None, anchor: AuditHead | None = None) -> list[str]:
    """Every problem with the audit log in ``directory``, one line each; [] when it verifies.

    ``device_public_key`` is the device key, or several (a retired key and its successor);
    each a plain Ed25519 key or a ``hybrid.VerifyKey``.
    ``device_id`` is the expected device ID (default: the first validly signed entry's).
    """
    directory = as_path(directory)
    trusted = trusted_verify_keys(device_public_key)
    files = audit_files(directory)
    if not files:
        return [f"{directory}: no audit log files"]
    problems, parsed = _parse_files(files)
    entries = _check_signatures(parsed, trusted, device_id, problems)
    return problems + _check_structure(entries, anchor)


def _parse_files(files: list[tuple[int, Path]]) -> tuple[list[str], list[Parsed]]:
    problems: list[str] = []
    parsed: list[Parsed] = []
    for i, (first_seq, path) in enumerate(files):
        try:
            lines, tail = read_audit_file(path)
        except AuditError as exc:
            problems.append(str(exc))
            continue
        if tail:
            last = i == len(files) - 1
            problems.append(f"{path.name}: torn last entry of {len(tail)} bytes (power cut, not yet recovered)"
                            if last else f"{path.name}: {len(tail)} bytes of garbage after the last entry")
        start = len(parsed)
        for n, line in enumerate(lines, start=2):
            try:
                parsed.append(parse_line(line, path.name, n))
            except AuditError as exc:
                problems.append(str(exc))
        if len(parsed) == start:
            problems.append(f"{path.name}: holds no valid entries")
        elif parsed[start][0].seq != first_seq:
            problems.append(f"{path.name}: named for entry {first_seq} but starts with entry {parsed[start][0].seq}")
    return problems, parsed


def _handover(entry: AuditEntry) -> tuple[str, str | None, str | None] | None:
    """(new key fingerprint, new device ID, its ML-DSA-65 fingerprint) if this entry hands the log over."""
    d = entry.details
    if entry.event == Event.PROVISION and d.get("action") == "reprovision_begin" and isinstance(d.get("device_key"), str):
        new_id, pq = d.get("device_id"), d.get("device_key_mldsa65")
        return d["device_key"], new_id if isinstance(new_id, str) else None, pq if isinstance(pq, str) else None
    return None


def _signer(trusted: list[hybrid.VerifyKey], body: bytes, signatures: hybrid.Signatures) -> hybrid.VerifyKey | None:
    """The trusted key whose Ed25519 half signed ``body`` (L4: the key in force at the first entry)."""
    for key in trusted:
        try:
            key.ed25519.verify(signatures.ed25519, SIGNATURE_CONTEXT + body)
            return key
        except InvalidSignature:
            continue
    return None


def _check_signatures(parsed: list[Parsed], trusted: list[hybrid.VerifyKey], device_id: str | None,
                      problems: list[str]) -> list[tuple[AuditEntry, bool]]:
    """Each entry's signature(s) by the key in force at its place, and its device ID."""
    by_fp = {keyfiles.fingerprint(k): k for k in trusted}
    current = _signer(trusted, *parsed[0][1:]) if parsed else None
    expected = device_id
    unverifiable: list[int] = []  # entries while no given key is in force
    bad: list[str] = []
    strangers: list[AuditEntry] = []
    checked: list[tuple[AuditEntry, bool]] = []
    for entry, body, sig in parsed:
        why = signature_problem(current, body, sig) if current is not None else None
        ok = current is not None and why is None
        if current is None:
            unverifiable.append(entry.seq)
        elif not ok:
            bad.append(f"entry {entry.seq} ({entry.file} line {entry.line}): {why}")
        if ok and expected is None:
            expected = entry.device
        if expected is not None and entry.device != expected:
            strangers.append(entry)
        handover = _handover(entry)
        if handover and (ok or current is None):
            new_fp, new_id, new_pq = handover
            expected = new_id or expected
            if new_fp in by_fp and new_pq is not None and by_fp[new_fp].mldsa65_fingerprint() != new_pq:
                problems.append(f"entry {entry.seq}: hands the log over to a hybrid key (ML-DSA-65 {new_pq[:16]}) "
                                f"that the given key {new_fp[:16]} is not")
            if new_fp in by_fp:
                if unverifiable:
                    problems.append(f"{_span(unverifiable[0], unverifiable[-1])}: not signed by any given key "
                                    f"(before the hand-over to key {new_fp[:16]} at entry {entry.seq}; "
                                    "give the retired key)")
                    unverifiable = []
                current = by_fp[new_fp]
            elif ok:
                problems.append(f"entry {entry.seq}: hands the log over to device key {new_fp[:16]}, "
                                "which was not given")
        checked.append((entry, ok))
    if unverifiable:
        problems.append(f"no entry is signed by the given device key ({len(parsed)} checked: wrong key, or the "
                        "whole log re-signed)" if len(unverifiable) == len(parsed)
                        else f"{_span(unverifiable[0], unverifiable[-1])}: not signed by any given key")
    problems += bad
    if len(parsed) > 1 and len(strangers) == len(parsed):
        problems.append(f"all {len(parsed)} entries are from device {strangers[0].device!r}, not {expected!r}")
    else:
        problems += [f"entry {e.seq}: from device {e.device!r}, not {expected!r}" for e in strangers]
    return checked


def _span(first: int, last: int) -> str:
    return f"entry {first}" if first == last else f"entries {first}-{last}"


def _check_structure(entries: list[tuple[AuditEntry, bool]], anchor: AuditHead | None) -> list[str]:
    """Sequence and chain problems across all entries, in file order."""
    problems: list[str] = []
    by_seq: dict[int, tuple[AuditEntry, bool]] = {}
    highest = -1
    for entry, ok in entries:
        if entry.seq in by_seq:
            problems.append(f"entry {entry.seq}: duplicated")
            continue
        if entry.seq < highest:
            problems.append(f"entry {entry.seq}: out of order (appears after entry {highest})")
        by_seq[entry.seq] = (entry, ok)
        highest = max(highest, entry.seq)
    last = -1
    for seq in sorted(by_seq):
        if seq > last + 1:
            problems.append(f"{_span(last + 1, seq - 1)} missing (removed)")
        last = seq
    for seq, (entry, ok) in by_seq.items():
        if seq == 0:
            if entry.prev != ZERO_DIGEST:
                problems.append("entry 0: does not start the chain (previous digest is not zero)")
        elif seq - 1 in by_seq:
            before, before_ok = by_seq[seq - 1]
            if ok and before_ok and entry.prev != before.digest:
                problems.append(f"entry {seq}: does not chain to entry {seq - 1} (previous-entry digest mismatch)")
    if anchor is not None and anchor.seq >= 0:
        if anchor.seq in by_seq:
            if by_seq[anchor.seq][0].digest != anchor.digest:
                problems.append(f"entry {anchor.seq}: differs from the recorded head digest")
        elif anchor.seq > last:
            problems.append(f"log ends at entry {last} but entry {anchor.seq} was recorded (newest entries removed)")
    return problems
