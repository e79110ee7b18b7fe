"""Export sealed evidence for court: verify, decrypt, remux each recording to one MP4, report.

Nothing is exported unless all of the evidence under the path verifies with the device
public key (``secure_store.verify``). Then each recording's segments are decrypted with the
agency private key in chain order (pre-event footage included: it is the recording's first
segment), the H.264 access units are copied into an MP4 with PyAV without re-encoding, and a
JSON report records what went in (file hashes), what came out (MP4 SHA-256), the
verification result, start/end UTC, markers, frame count, gaps, recovered segments and the
clock offset. Outputs are written durably and never overwrite anything.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterable

from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from recorder.chunk import ChunkFormatError, decode_chunk
from recorder.location import LocationFormatError
from secure_store import keys
from secure_store.audit import Event, read_entries
from secure_store.durable import fsync_dir, write_atomic
from secure_store.errors import AuditError, StoreError
from secure_store.format import read_header, sha256
from secure_store.verify import VerifiedSegment, VerifyReport, decrypt_chunks, verify_path

from export.errors import ExportError, ExportRefused
from export.gpx import RecordingTrack, clock_entry
from export.mp4 import Mp4Remuxer, iso_utc, sha256_file

log = logging.getLogger(__name__)

REPORT_FORMAT = "bodycam-export-report"
REPORT_VERSION = 1
GAP_FACTOR = 1.5  # a frame interval this much longer than the nominal one is a gap
CLOCK_EVENTS = (Event.CLOCK_SET, Event.CLOCK_SYNC)


@dataclass(frozen=True)
class ExportedRecording:
    recording_id: str
    mp4: Path
    report: Path
    frame_count: int
    mp4_sha256: str


@dataclass
class ExportResult:
    verification: VerifyReport
    recordings: list[ExportedRecording] = field(default_factory=list)


def export_evidence(path: Path, agency_key: x25519.X25519PrivateKey, out_dir: Path,
                    device_key: ed25519.Ed25519PublicKey | None = None) -> ExportResult:
    """Verify everything under ``path``, then write one MP4 and one JSON report per recording."""
    path, out_dir = Path(path), Path(out_dir)
    try:
        verification = verify_path(path, device_key)
    except StoreError as exc:
        raise ExportError(str(exc)) from None
    if verification.problems:
        raise ExportRefused([str(p) for p in verification.problems])
    if not verification.segments:
        raise ExportError(f"{path}: no sealed segments to export")
    recordings = group_recordings(verification.segments)
    _check_agency_key(verification.segments, agency_key)
    if not out_dir.is_dir():
        out_dir.mkdir(parents=True)
        fsync_dir(out_dir.parent)
    for segments in recordings:
        stem = _output_stem(segments[0])
        for suffix in (".mp4", ".json", ".gpx"):
            if (out_dir / (stem + suffix)).exists():
                raise ExportError(f"{out_dir / (stem + suffix)} already exists; refusing to overwrite an export")
    result = ExportResult(verification)
    for segments in recordings:
        try:
            result.recordings.append(_export_recording(segments, agency_key, device_key, out_dir, verification))
        except StoreError as exc:  # e.g. a file changed between verification and decryption
            raise ExportError(str(exc)) from None
    return result


def _check_agency_key(segments: Iterable[VerifiedSegment], agency_key: x25519.X25519PrivateKey) -> None:
    """Refuse before writing anything if any segment was sealed to another agency key."""
    fingerprint = sha256(keys.raw_public(agency_key.public_key()))
    for s in segments:
        try:
            with open(s.path, "rb") as f:
                header, _ = read_header(f, Path(s.path).name)
        except (OSError, StoreError) as exc:
            raise ExportError(f"{Path(s.path).name}: cannot read its header: {exc}") from None
        if header.agency_key_fp != fingerprint:
            raise ExportError(f"{Path(s.path).name}: sealed to another agency key "
                              f"({header.agency_key_fp.hex()[:16]}, not {fingerprint.hex()[:16]}); nothing exported")


def group_recordings(segments: Iterable[VerifiedSegment]) -> list[list[VerifiedSegment]]:
    """Segments by (device key, recording ID), each in chain order, recordings by first segment."""
    groups: dict[tuple[str, str], list[VerifiedSegment]] = {}
    for s in segments:
        groups.setdefault((s.device_key_fp, s.manifest.recording_id), []).append(s)
    ordered = [sorted(g, key=lambda s: s.manifest.segment_seq) for g in groups.values()]
    return sorted(ordered, key=lambda g: (g[0].device_key_fp, g[0].manifest.segment_seq))


def _output_stem(first: VerifiedSegment) -> str:
    m = first.manifest
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{m.device_id}_{m.recording_id}")


def _export_recording(segments: list[VerifiedSegment], agency_key: x25519.X25519PrivateKey,
                      device_key: ed25519.Ed25519PublicKey | None, out_dir: Path,
                      verification: VerifyReport) -> ExportedRecording:
    first, last = segments[0].manifest, segments[-1].manifest
    stem = _output_stem(segments[0])
    mp4_path, report_path = out_dir / (stem + ".mp4"), out_dir / (stem + ".json")
    nominal_us = _nominal_interval_us(segments)
    metadata = {"creation_time": iso_utc(first.first_utc_us),
                "comment": f"bodycam evidence export: device {first.device_id}, recording {first.recording_id}; "
                           f"see {report_path.name}"}
    muxer = Mp4Remuxer(out_dir / f".{stem}.mp4.partial", rate=Fraction(round(1_000_000 / nominal_us * 1000), 1000),
                       metadata=metadata)
    audit = _audit_context(verification, segments)  # before writing: it may refuse
    gaps: list[dict] = []
    track = RecordingTrack()  # the GPS fixes sealed in the chunks (export.gpx)
    try:
        for s in segments:
            decoded = 0
            for plaintext in decrypt_chunks(Path(s.path), agency_key, device_key):
                try:
                    frames = decode_chunk(plaintext)
                    track.add_chunk(plaintext, s.manifest.utc_offset_us)
                except (ChunkFormatError, LocationFormatError) as exc:
                    raise ExportError(f"{Path(s.path).name}: chunk plaintext does not parse: {exc}") from None
                for frame in frames:
                    gap = muxer.add(frame)
                    if gap > GAP_FACTOR * nominal_us:
                        gaps.append(_gap(s, muxer.previous_ts, gap))
                decoded += len(frames)
            if decoded != s.manifest.frame_count:
                raise ExportError(f"{Path(s.path).name}: decrypted {decoded} frames but the manifest says "
                                  f"{s.manifest.frame_count}")
        mp4 = muxer.finish(mp4_path, first_utc_us=first.first_utc_us)
    except BaseException:
        muxer.abort()
        raise
    gpx_path = out_dir / (stem + ".gpx") if track.fixes else None
    if gpx_path is not None:
        track.write_gpx(gpx_path, f"{first.device_id} {first.recording_id}")
    report = {
        "format": REPORT_FORMAT, "version": REPORT_VERSION,
        "exported_utc": iso_utc(dt.datetime.now(dt.timezone.utc).timestamp() * 1e6),
        "device_id": first.device_id, "device_key_sha256": segments[0].device_key_fp,
        "recording_id": first.recording_id,
        "verification": {"ok": True, "problems": [], "segments_checked": len(verification.segments),
                         "audit_logs_checked": verification.audit_logs},
        "inputs": [item for s in segments for item in _input_hashes(Path(s.path))],
        "mp4": {"file": mp4_path.name, **mp4, "codec": "h264", "reencoded": False},
        "start_utc": iso_utc(first.first_utc_us), "end_utc": iso_utc(last.last_utc_us),
        "frame_count": mp4["frames"],
        "segments": [_segment_entry(s) for s in segments],
        "markers": [{"timestamp_us": mk.timestamp_us, "utc": iso_utc(mk.timestamp_us + s.manifest.utc_offset_us),
                     "offset_s": (mk.timestamp_us - first.first_ts_us) / 1e6, "label": mk.label,
                     "position": track.position_at(mk.timestamp_us + s.manifest.utc_offset_us)}
                    for s in segments for mk in s.manifest.markers],
        "gaps": gaps,
        "location": track.report(gpx_path.name if gpx_path else None),
        "recovered_segments": [Path(s.path).name for s in segments if s.manifest.recovered],
        "storage_full_segments": [Path(s.path).name for s in segments if s.manifest.storage_full],
        "audit": audit,
        "clock": {"utc_offset_us": sorted({s.manifest.utc_offset_us for s in segments}),
                  "sources": sorted({s.manifest.clock_source for s in segments}),
                  "note": "utc = frame timestamp_us + utc_offset_us of its segment",
                  "error_bounds": [{"file": Path(s.path).name, **clock_entry(s.manifest.clock)} for s in segments]},
    }
    write_atomic(report_path, json.dumps(report, indent=2, sort_keys=True).encode() + b"\n", 0o644,
                 overwrite=False)
    log.info("exported %s: %d frames, %s", mp4_path.name, mp4["frames"], report_path.name)
    return ExportedRecording(first.recording_id, mp4_path, report_path, mp4["frames"], mp4["sha256"])


def _nominal_interval_us(segments: list[VerifiedSegment]) -> float:
    """The frame interval the device recorded at, from the signed counts and times."""
    rates = [(m.last_ts_us - m.first_ts_us) / (m.frame_count - 1)
             for m in (s.manifest for s in segments) if m.frame_count > 1 and m.last_ts_us > m.first_ts_us]
    return min(rates) if rates else 1_000_000 / 30


def _audit_context(verification: VerifyReport, segments: list[VerifiedSegment]) -> dict:
    """From the (verified) audit logs beside the evidence: their heads, the entries that name this
    recording or its segments, and the clock changes in force during it."""
    first, last = segments[0].manifest, segments[-1].manifest
    names = {first.recording_id} | {Path(s.path).stem for s in segments}
    start, end = iso_utc(first.first_utc_us), iso_utc(last.last_utc_us)
    logs, entries = [], []
    for directory in verification.audit_logs:
        try:
            found = read_entries(Path(directory))
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


def _gap(segment: VerifiedSegment, before_ts: int, gap_us: int) -> dict:
    m = segment.manifest
    return {"segment": Path(segment.path).name, "after_timestamp_us": before_ts,
            "after_utc": iso_utc(before_ts + m.utc_offset_us), "gap_us": gap_us}


def _segment_entry(s: VerifiedSegment) -> dict:
    m = s.manifest
    return {"file": Path(s.path).name, "segment_seq": m.segment_seq, "index": m.index, "frames": m.frame_count,
            "chunks": len(m.chunk_digests), "first_timestamp_us": m.first_ts_us, "last_timestamp_us": m.last_ts_us,
            "first_utc": iso_utc(m.first_utc_us), "last_utc": iso_utc(m.last_utc_us), "utc_offset_us": m.utc_offset_us,
            "clock_source": m.clock_source, "recovered": m.recovered, "storage_full": m.storage_full,
            "manifest_sha256": m.digest.hex()}


def _input_hashes(segment: Path) -> list[dict]:
    return [{"file": p.name, "size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in (segment, segment.with_suffix(".manifest"))]
