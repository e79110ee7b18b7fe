"""Custody checks over one device directory: evidence against its audit log, receipts and anchors.

The segment chain alone cannot show that the newest segments were deleted, nor the audit
log alone that its newest entries were: a shorter history is still a valid history. These
checks tie the three records together (FORMAT.md, reader rules A1-A6 and R1-R6):

- every present segment has its ``segment_sealed`` entry, naming the same manifest digest;
- every ``segment_sealed`` entry not followed by a ``delete`` of that segment has its segment here;
- every receipt's manifests are still here, unchanged, and the log still reaches its audit head;
- the log reaches every anchor (seq, digest) the verifier was given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from secure_store.audit_format import KNOWN_EVENTS, AuditEntry, AuditHead, Event
from secure_store.receipts import Receipt


@dataclass(frozen=True)
class Finding:
    """One custody problem or warning: the file it concerns (relative to the device directory) and why."""

    file: str
    reason: str


def segment_name(seq: int) -> str:
    return f"seg-{seq:010d}"


def check_evidence_against_audit(present: dict[int, str], entries: list[AuditEntry] | None,
                                 audit_problems: bool) -> list[Finding]:
    """A1-A4: ``present`` maps each verified segment's seq to its manifest digest (hex)."""
    if entries is None:
        if present:
            return [Finding("audit", f"no audit log, but {len(present)} sealed segment(s): the log that records "
                                     "their sealing was removed")]
        return []
    if audit_problems:
        return []  # the log itself failed; cross-checks against it would only repeat that
    sealed: dict[int, str] = {}
    released: set[str] = set()
    out: list[Finding] = []
    for e in entries:
        if e.event == Event.SEGMENT_SEALED:
            seq = e.details["seq"]
            if seq in sealed:
                out.append(Finding("audit", f"entry {e.seq}: segment {seq} sealed twice"))
            sealed[seq] = e.details["manifest_sha256"]
        elif e.event == Event.DELETE:
            released.add(e.details["segment"] + ":" + e.details["manifest_sha256"])
    for seq, digest in sorted(present.items()):
        name = segment_name(seq)
        if seq not in sealed:
            out.append(Finding(f"evidence/{name}.manifest", "not in the audit log: no segment_sealed entry names "
                                                          "it (log cut or replaced)"))
        elif sealed[seq] != digest:
            out.append(Finding(f"evidence/{name}.manifest", "differs from the manifest the audit log recorded "
                                                          "when it was sealed"))
    for seq, digest in sorted(sealed.items()):
        name = segment_name(seq)
        if seq not in present and f"{name}:{digest}" not in released:
            out.append(Finding(f"evidence/{name}.seg", "missing: the audit log records this segment as sealed "
                                                     "and never released"))
    return out


def check_anchors(entries: list[AuditEntry] | None, anchors: Iterable[tuple[AuditHead, str]]) -> list[Finding]:
    """A5: the log must still hold each anchor's entry, with the anchored digest."""
    by_seq = {e.seq: e for e in entries or []}
    last = max(by_seq, default=-1)
    out = []
    for head, source in anchors:
        entry = by_seq.get(head.seq)
        if entry is None:
            what = ("the log ends at entry %d" % last) if head.seq > last else f"entry {head.seq} is not in the log"
            out.append(Finding("audit", f"{source} anchors entry {head.seq}, but {what} (entries removed)"))
        elif entry.digest != head.digest:
            out.append(Finding("audit", f"{source} anchors entry {head.seq} with another digest (log replaced)"))
    return out


def check_receipts(receipts: list[Receipt], manifests: dict[int, str], device_ids: set[str],
                   device_fps: set[str]) -> list[Finding]:
    """R3-R5: each receipt's manifests are still here, unchanged, and name this device."""
    out = []
    for r in receipts:
        if device_ids and r.device_id not in device_ids:
            out.append(Finding(r.file, f"is for device {r.device_id!r}, not this directory's"))
        if device_fps and r.device_key not in device_fps:
            out.append(Finding(r.file, "names a device key that is not trusted for this device"))
        for seq, digest in r.manifests:
            name = segment_name(seq)
            if seq not in manifests:
                out.append(Finding(f"evidence/{name}.manifest", f"missing, though {r.file} records that the dock "
                                                                f"received and confirmed it"))
            elif manifests[seq] != digest:
                out.append(Finding(f"evidence/{name}.manifest", f"differs from the one {r.file} records"))
    return out


def receipt_anchors(receipts: list[Receipt]) -> list[tuple[AuditHead, str]]:
    return [(AuditHead(*r.audit_head), r.file) for r in receipts if r.audit_head is not None]


def event_warnings(entries: list[AuditEntry] | None) -> list[Finding]:
    """Event names outside the version-1 list: accepted, but said (W2)."""
    unknown = sorted({e.event for e in entries or [] if e.event not in KNOWN_EVENTS})
    return [Finding("audit", f"event name(s) not in the version-1 list: {', '.join(unknown)}")] if unknown else []


def sealed_but_absent(device_dir: Path) -> list[str]:
    """Segments the audit log copy in ``device_dir`` says were sealed and not released, but which
    are not in ``evidence/``: what a dock must still fetch so its store satisfies A5.

    A segment sealed while a pull was under way is in the audit log the dock fetched last, but
    was not in the listing it fetched segments from.
    """
    from secure_store.audit_format import read_entries
    from secure_store.errors import AuditError

    try:
        entries = read_entries(Path(device_dir) / "audit")
    except AuditError:
        return []
    released = {e.details["segment"] for e in entries if e.event == Event.DELETE}
    evidence = Path(device_dir) / "evidence"
    names = []
    for e in entries:
        stem = e.details.get("segment") if e.event == Event.SEGMENT_SEALED else None
        if stem and stem not in released and not (evidence / f"{stem}.manifest").exists():
            names += [f"{stem}.seg", f"{stem}.manifest"]
    return names
