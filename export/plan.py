"""What goes into each exported MP4: the segments that verified, and what is missing and why.

A recording is exported whole when every segment it is known to have is here and verifies.
What it is known to have comes from the signed manifests (indices 0..n, and any manifest
beside a single exported segment) and from the verified audit log (``record_stop`` says how
many segments the device began). Anything short of that is a *partial* export: its files are
named ``..._partial_seqA-B`` and its reports list each missing segment with the UTC span it
covers, when that span is known.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from secure_store.audit import Event, read_entries
from secure_store.errors import AuditError, FormatError
from secure_store.sealer import MANIFEST_SUFFIX, SEGMENT_SUFFIX
from secure_store.sources import as_path
from secure_store.verify import (TrustedKeys, VerifiedSegment, VerifyReport, check_manifest, read_manifest,
                                 verify_segment)
from secure_store.trust import find_device_key

from export.mp4 import iso_utc

log = logging.getLogger(__name__)


@dataclass
class RecordingPlan:
    """One recording's export: segments to remux (chain order), and the footage it lacks."""

    segments: list[VerifiedSegment]
    excluded: list[tuple[VerifiedSegment, str]] = field(default_factory=list)
    damaged: dict[str, str] = field(default_factory=dict)  # path -> why: exported chunk by chunk (best effort)
    missing: list[dict[str, Any]] = field(default_factory=list)
    audit: dict[str, Any] = field(default_factory=dict)  # record_start / record_stop details, if logged
    problems: list[str] = field(default_factory=list)  # the verification problems that concern it

    @property
    def recording_id(self) -> str:
        return (self.segments or [s for s, _ in self.excluded])[0].manifest.recording_id

    @property
    def device_id(self) -> str:
        return (self.segments or [s for s, _ in self.excluded])[0].manifest.device_id

    @property
    def partial(self) -> bool:
        return bool(self.missing or self.damaged)

    @property
    def stem(self) -> str:
        """``DEVICE_RECORDING``, or ``DEVICE_RECORDING_partial_seqA-B`` when footage is missing."""
        name = f"{self.device_id}_{self.recording_id}"
        if self.partial and self.segments:
            name += f"_partial_seq{self.segments[0].manifest.segment_seq}-{self.segments[-1].manifest.segment_seq}"
        return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def plan_recordings(path: Path, verification: VerifyReport, device_key: TrustedKeys,
                    best_effort: bool) -> list[RecordingPlan]:
    """One plan per recording found under ``path``, in chain order."""
    bad, damaged = _damaged_segments(verification, device_key) if best_effort else ({}, {})
    known = _sibling_manifests(path, device_key) if as_path(path).is_file() else []
    logged = _audit_recordings(verification)
    per, apart = attribute_problems(verification)
    plans = []
    for group in group_recordings(verification.segments):
        good = [s for s in group if s.path not in bad]
        plan = RecordingPlan(good, [(s, bad[s.path]) for s in group if s.path in bad],
                             {s.path: damaged[s.path] for s in good if s.path in damaged},
                             audit=logged.get(group[0].manifest.recording_id, {}),
                             problems=per.get((group[0].device_key_fp, group[0].manifest.recording_id), []) + apart)
        rec = group[0].manifest
        context = [m for m in known if m.recording_id == rec.recording_id and m.device_id == rec.device_id]
        plan.missing = _missing(plan, context)
        plans.append(plan)
    return plans


def attribute_problems(verification: VerifyReport) -> tuple[dict[tuple[str, str], list[str]], list[str]]:
    """Verification problems by the recording they concern, ``(device key, recording ID)``, and the rest.

    A problem in a segment's chunks concerns its recording. Any other problem naming a segment
    (its header, its place in the chain: a segment missing or swapped before it) also concerns
    the recording of the segment before it in the chain, which may be the one that lost its
    tail. A problem naming no verified segment (the audit log, a segment with no manifest, a
    segment the audit log says is missing) could concern any recording: it is returned apart.
    """
    by_name: dict[str, list[VerifiedSegment]] = {}
    chains: dict[str, list[VerifiedSegment]] = {}
    for s in verification.segments:
        for name in (Path(s.path).name, Path(s.path).with_suffix(MANIFEST_SUFFIX).name):
            by_name.setdefault(name, []).append(s)
        chains.setdefault(s.manifest.device_id, []).append(s)
    per: dict[tuple[str, str], list[str]] = {}
    apart: list[str] = []
    for p in verification.problems:
        named = by_name.get(p.file)
        if not named:
            apart.append(str(p))
            continue
        concerned = set()
        for s in named:  # several only when two devices' files share a name: all of them, to be safe
            concerned.add((s.device_key_fp, s.manifest.recording_id))
            before = [x for x in chains[s.manifest.device_id] if x.manifest.segment_seq < s.manifest.segment_seq]
            if p.chunk is None and before:
                prev = max(before, key=lambda x: x.manifest.segment_seq)
                concerned.add((prev.device_key_fp, prev.manifest.recording_id))
        for key in sorted(concerned):
            per.setdefault(key, []).append(str(p))
    return per, apart


def group_recordings(segments: Iterable[VerifiedSegment]) -> list[list[VerifiedSegment]]:
    """Segments by (device key, recording ID), each in chain order, recordings by first segment."""
    groups: dict[tuple[str, str], list[VerifiedSegment]] = {}
    for s in segments:
        groups.setdefault((s.device_key_fp, s.manifest.recording_id), []).append(s)
    ordered = [sorted(g, key=lambda s: s.manifest.segment_seq) for g in groups.values()]
    return sorted(ordered, key=lambda g: (g[0].device_key_fp, g[0].manifest.segment_seq))


def _damaged_segments(verification: VerifyReport, device_key: TrustedKeys) -> tuple[dict[str, str], dict[str, str]]:
    """Segments a problem names that do not verify alone: (left out, exported chunk by chunk), path -> why.

    A chain problem (say, "sequence 7 missing") names the segment after the hole; that segment
    still verifies on its own and is kept whole. A segment whose only problems are in its
    chunks (altered, reordered, cut short) keeps the chunks that match its signed manifest;
    any other problem (header, file name, no manifest) leaves the whole segment out.
    """
    by_name = {}
    for s in verification.segments:
        by_name[Path(s.path).name] = s.path
        by_name[Path(s.path).with_suffix(MANIFEST_SUFFIX).name] = s.path
    named = {by_name[p.file] for p in verification.problems if p.file in by_name}
    bad, damaged = {}, {}
    for seg_path in sorted(named):
        _, problems = verify_segment(as_path(seg_path), device_key)
        if problems:
            why = "; ".join(str(p) for p in problems)
            (damaged if all(p.chunk is not None for p in problems) else bad)[seg_path] = why
    return bad, damaged


def _sibling_manifests(path: Path, device_key: TrustedKeys) -> list:
    """Signed manifests beside a single exported segment: they say what the rest of its recording was."""
    keys = device_key
    if keys is None:
        try:
            found = find_device_key(Path(path).parent)
        except FormatError:
            found = None
        keys = found.all if found else None
    if not keys:
        return []
    manifests = []
    for mpath in sorted(Path(path).parent.glob("*" + MANIFEST_SUFFIX)):
        if mpath.name.startswith(".") or mpath.with_suffix(SEGMENT_SUFFIX) == Path(path).with_suffix(SEGMENT_SUFFIX):
            continue
        try:
            manifest = read_manifest(mpath)
        except FormatError:
            continue
        if not check_manifest(manifest, mpath.name, keys):
            manifests.append(manifest)
    return manifests


def _audit_recordings(verification: VerifyReport) -> dict[str, dict[str, Any]]:
    """recording ID -> what the verified audit log says of it: trigger, pre-event, stop reason, segments."""
    found: dict[str, dict[str, Any]] = {}
    for directory in verification.audit_logs:
        try:
            entries = read_entries(as_path(directory))
        except AuditError:
            continue  # verified just now; the report's audit section says if it changed since
        for e in entries:
            rec = e.details.get("recording_id", e.details.get("recording"))
            if not isinstance(rec, str):
                continue
            if e.event == Event.RECORD_START:
                found.setdefault(rec, {}).update(start_utc=e.utc, trigger=e.details.get("trigger"),
                                                 pre_event_s=e.details.get("pre_event_s"))
            elif e.event == Event.RECORD_STOP:
                found.setdefault(rec, {}).update(stop_utc=e.utc, stop_reason=e.details.get("reason"),
                                                 segments=e.details.get("segments"))
    return found


def _missing(plan: RecordingPlan, context: list) -> list[dict[str, Any]]:
    """Each part of the recording not in this export: which segment, what UTC span, why."""
    have = {s.manifest.index for s in plan.segments}
    spans = {s.manifest.index: s.manifest for s in plan.segments}
    reasons: dict[int, str] = {}
    for s, why in plan.excluded:
        spans.setdefault(s.manifest.index, s.manifest)
        reasons[s.manifest.index] = f"{Path(s.path).name} does not verify: {why}"
    for m in context:
        spans.setdefault(m.index, m)
        reasons.setdefault(m.index, f"segment {m.segment_seq} is beside the evidence but not in this export")
    logged = plan.audit.get("segments")
    last = max([*spans, (logged - 1) if isinstance(logged, int) and logged > 0 else 0])
    missing = []
    for index in range(0, last + 1):
        if index in have:
            continue
        m = spans.get(index)
        if m is not None:
            start, end = iso_utc(m.first_utc_us), iso_utc(m.last_utc_us)
        else:
            before = [x for i, x in spans.items() if i < index]
            after = [x for i, x in spans.items() if i > index]
            start = iso_utc(max(x.last_utc_us for x in before)) if before else None
            end = iso_utc(min(x.first_utc_us for x in after)) if after else None
        reason = reasons.get(index) or ("not found beside the evidence"
                                        + (f" (the audit log says the device began {logged} segment(s))"
                                           if index > max(spans) else ""))
        missing.append({"index": index, "what": f"recording segment {index}", "from_utc": start, "to_utc": end,
                        "reason": reason})
    return missing
