"""The JSON export report: every fact the HTML report shows and the C2PA manifest asserts.

One dict, built once per exported MP4, so the machine-readable report, the page a person
reads and the signed evidence assertion inside the MP4 cannot tell different stories.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import shlex
from pathlib import Path
from typing import Any

from secure_store.audit import Event, read_entries
from secure_store.errors import AuditError
from secure_store.sources import as_path
from secure_store.verify import VerifiedSegment, VerifyReport

from export.errors import ExportError
from export.gpx import RecordingTrack, clock_entry
from export.mp4 import iso_utc, sha256_file
from export.plan import RecordingPlan

log = logging.getLogger(__name__)

REPORT_FORMAT = "bodycam-export-report"
REPORT_VERSION = 2
CLOCK_EVENTS = (Event.CLOCK_SET, Event.CLOCK_SYNC)
MAX_CERT_FILE = 64 * 1024


def build_report(plan: RecordingPlan, verification: VerifyReport, mp4: dict[str, Any], gaps: list[dict],
                 c2pa: dict[str, Any], best_effort: bool, track: RecordingTrack | None = None,
                 gpx_name: str | None = None) -> dict[str, Any]:
    """The report of one exported recording (``mp4``: the remuxer's facts; ``c2pa``: what signed it;
    ``track``: the GPS fixes sealed in its chunks, written to ``gpx_name``)."""
    segments = plan.segments
    first, last = segments[0].manifest, segments[-1].manifest
    rec = plan.audit
    report = {
        "format": REPORT_FORMAT, "version": REPORT_VERSION,
        "exported_utc": iso_utc(dt.datetime.now(dt.timezone.utc).timestamp() * 1e6),
        "export": {"partial": plan.partial, "best_effort": best_effort,
                   "kind": "partial" if plan.partial else "complete"},
        "device_id": first.device_id, "device_key_sha256": segments[0].device_key_fp,
        "device_certificate": device_certificate(segments),
        "recording_id": first.recording_id,
        "recording": {"trigger": rec.get("trigger"), "stop_reason": rec.get("stop_reason"),
                      "segments_begun": rec.get("segments")},
        "verification": {"ok": not plan.problems, "problems": plan.problems,
                         "other_problems": [str(p) for p in verification.problems if str(p) not in plan.problems],
                         "segments_checked": len(verification.segments),
                         "audit_logs_checked": verification.audit_logs,
                         "device_trust": getattr(verification, "trust", None) or None},  # what the keys rest on
        "inputs": [item for s in segments for item in _input_hashes(as_path(s.path))],
        "mp4": {**mp4, "codec": "h264", "reencoded": False, "fast_start": True},
        "start_utc": iso_utc(first.first_utc_us), "end_utc": iso_utc(last.last_utc_us),
        "frame_count": mp4["frames"],
        "segments": [segment_entry(s) for s in segments],
        "markers": markers(segments, track),
        "location": track.report(gpx_name) if track is not None else None,
        "pre_event": _pre_event(plan),
        "gaps": gaps,
        "missing": plan.missing,
        "recovered_segments": [Path(s.path).name for s in segments if s.manifest.recovered],
        "storage_full_segments": [Path(s.path).name for s in segments if s.manifest.storage_full],
        "muted_spans": [],  # audio: spans the officer muted, once chunks carry audio
        "audio": None,
        "audit": audit_context(verification, segments),
        "clock": {"utc_offset_us": sorted({s.manifest.utc_offset_us for s in segments}),
                  "sources": sorted({s.manifest.clock_source for s in segments}),
                  "note": "utc = frame timestamp_us + utc_offset_us of its segment",
                  "error_bounds": [{"file": Path(s.path).name, **clock_entry(s.manifest.clock)} for s in segments]},
        "c2pa": c2pa,
    }
    report["verify_commands"] = verify_commands(report, plan)
    return report


def evidence_assertion(plan: RecordingPlan, verification: VerifyReport, gaps: list[dict],
                       best_effort: bool) -> dict[str, Any]:
    """The facts the C2PA manifest asserts (``org.bodycam.evidence``); lists hold objects only."""
    segments = plan.segments
    first, last = segments[0].manifest, segments[-1].manifest
    return {
        "device": {"device_id": first.device_id, "device_key_sha256": segments[0].device_key_fp,
                   "device_certificate": device_certificate(segments)},
        "recording_id": first.recording_id,
        "start_utc": iso_utc(first.first_utc_us), "end_utc": iso_utc(last.last_utc_us),
        "clock": [{"source": s.manifest.clock_source, "utc_offset_us": s.manifest.utc_offset_us,
                   "segment_seq": s.manifest.segment_seq} for s in segments],
        "segments": [segment_entry(s) for s in segments],
        "markers": markers(segments),
        "partial": plan.partial, "best_effort": best_effort,
        "missing": plan.missing,
        "gaps": gaps,
        "verification_problems": [{"problem": p} for p in plan.problems],
        "remuxed_not_reencoded": True,
    }


def markers(segments: list[VerifiedSegment], track: RecordingTrack | None = None) -> list[dict[str, Any]]:
    """Each marker with its UTC and, given the recording's GPS track, where the camera was."""
    first = segments[0].manifest
    out = []
    for s in segments:
        for mk in s.manifest.markers:
            utc_us = mk.timestamp_us + s.manifest.utc_offset_us
            entry = {"timestamp_us": mk.timestamp_us, "utc": iso_utc(utc_us),
                     "offset_s": (mk.timestamp_us - first.first_ts_us) / 1e6, "label": mk.label}
            if track is not None:
                entry["position"] = track.position_at(utc_us)
            out.append(entry)
    return out


def segment_entry(s: VerifiedSegment) -> dict[str, Any]:
    m = s.manifest
    return {"file": Path(s.path).name, "segment_seq": m.segment_seq, "index": m.index, "frames": m.frame_count,
            "chunks": len(m.chunk_digests), "first_timestamp_us": m.first_ts_us, "last_timestamp_us": m.last_ts_us,
            "first_utc": iso_utc(m.first_utc_us), "last_utc": iso_utc(m.last_utc_us), "utc_offset_us": m.utc_offset_us,
            "clock_source": m.clock_source, "recovered": m.recovered, "storage_full": m.storage_full,
            "manifest_sha256": m.digest.hex(), **s.protection}


def device_certificate(segments: list[VerifiedSegment]) -> dict[str, Any] | None:
    """The certificate in ``certs/`` beside the evidence whose key is the one that signed it, if any.

    Only named here: whether it chains to the agency root is the verifier's finding
    (``verification.device_trust``).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    evidence = as_path(segments[0].path).parent  # a flat copy holds certs/ itself; a device directory beside evidence/
    directory = next((d / "certs" for d in (evidence, evidence.parent) if (d / "certs").is_dir()), None)
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    for path in sorted(directory.glob("*.pem")) if directory is not None else []:
        try:
            certs = x509.load_pem_x509_certificates(path.read_bytes()[:MAX_CERT_FILE])
        except (OSError, ValueError):
            continue
        for cert in certs:
            try:
                key_fp = hashlib.sha256(cert.public_key().public_bytes(*raw)).hexdigest()
            except (ValueError, TypeError):  # not a raw-encodable (Ed25519) key: not a device certificate
                continue
            if key_fp == segments[0].device_key_fp:
                der = cert.public_bytes(serialization.Encoding.DER)
                return {"file": f"certs/{path.name}", "subject": cert.subject.rfc4514_string(),
                        "issuer": cert.issuer.rfc4514_string(), "sha256": hashlib.sha256(der).hexdigest(),
                        "pem": cert.public_bytes(serialization.Encoding.PEM).decode()}
    return None


def _pre_event(plan: RecordingPlan) -> dict[str, Any] | None:
    """Footage from before the press: the audit log's ``pre_event_s`` from the recording's first frame."""
    seconds = plan.audit.get("pre_event_s")
    first = plan.segments[0].manifest
    if not isinstance(seconds, (int, float)) or seconds <= 0 or first.index != 0:
        return None
    return {"seconds": float(seconds), "from_utc": iso_utc(first.first_utc_us),
            "to_utc": iso_utc(first.first_utc_us + seconds * 1e6)}


def audit_context(verification: VerifyReport, segments: list[VerifiedSegment]) -> dict[str, Any]:
    """From the (verified) audit logs beside the evidence: their heads, the entries that name this
    recording or its segments, and the clock changes in force during it."""
    first, last = segments[0].manifest, segments[-1].manifest
    names = {first.recording_id} | {Path(s.path).stem for s in segments}
    start, end = iso_utc(first.first_utc_us), iso_utc(last.last_utc_us)
    logs, entries = [], []
    for directory in verification.audit_logs:
        try:
            found = read_entries(as_path(directory))
        except AuditError as exc:  # verified just now, so only a file changed since then gets here
            raise ExportError(f"audit log changed during export: {exc}") from None
        if found:
            logs.append({"directory": str(directory), "head_seq": found[-1].seq, "head_digest": found[-1].digest})
        clock_before = [e for e in found if e.event in CLOCK_EVENTS and e.utc < start][-1:]
        for e in found:
            named = any(isinstance(v, str) and v in names for v in e.details.values())
            clock = e.event in CLOCK_EVENTS and (e in clock_before or start <= e.utc <= end)
            if named or clock:
                entries.append({"seq": e.seq, "utc": e.utc, "event": e.event, "details": e.details})
    return {"logs": logs, "entries": entries}


def verify_commands(report: dict[str, Any], plan: RecordingPlan) -> list[str]:
    """What an independent expert runs: the evidence against the device key, the MP4 against the root."""
    seg_dir = as_path(plan.segments[0].path).parent
    mp4 = report["mp4"]["file"]
    lines = ["# 1. the sealed evidence: signatures, chain, every chunk (public keys only; docs/FORMAT.md)",
             f"bodycam verify {shlex.quote(str(seg_dir))}",
             "# 2. the MP4 is the file this report describes",
             f"sha256sum {shlex.quote(mp4)}   # expect {report['mp4']['sha256']}"]
    if report["c2pa"]["signed"]:
        lines += ["# 3. its Content Credentials, against the agency root certificate (any C2PA reader)",
                  f"bodycam export-check {shlex.quote(mp4)} --trust-root AGENCY-ROOT.pem",
                  f"c2patool {shlex.quote(mp4)} trust --trust_anchors AGENCY-ROOT.pem   # the C2PA project's own tool"]
    return lines


def _input_hashes(segment: Path) -> list[dict]:
    return [{"file": p.name, "size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in (segment, segment.with_suffix(".manifest"))]
