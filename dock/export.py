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
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable

from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from buffer.frame import Frame
from recorder.chunk import ChunkFormatError, decode_chunk
from secure_store import keys
from secure_store.audit import Event, read_entries
from secure_store.durable import fsync_dir, write_atomic
from secure_store.errors import AuditError, StoreError
from secure_store.format import read_header, sha256
from secure_store.verify import VerifiedSegment, VerifyReport, decrypt_chunks, verify_path

log = logging.getLogger(__name__)

REPORT_FORMAT = "bodycam-export-report"
REPORT_VERSION = 1
TIME_BASE = Fraction(1, 1_000_000)  # frame timestamps are µs; the MP4 keeps them exactly
GAP_FACTOR = 1.5  # a frame interval this much longer than the nominal one is a gap
CLOCK_EVENTS = (Event.CLOCK_SET, Event.CLOCK_SYNC)


class ExportError(Exception):
    """Export failed or was refused; the message is one line."""

    exit_code = 1


class ExportRefused(ExportError):
    """The evidence does not verify, so nothing was exported. ``problems`` names each failure."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"verification failed ({len(problems)} problem{'s' * (len(problems) != 1)}); "
                         "nothing exported")
        self.problems = problems


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
        for suffix in (".mp4", ".json"):
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
    metadata = {"creation_time": _iso(first.first_utc_us),
                "comment": f"bodycam evidence export: device {first.device_id}, recording {first.recording_id}; "
                           f"see {report_path.name}"}
    muxer = Mp4Remuxer(out_dir / f".{stem}.mp4.partial", rate=Fraction(round(1_000_000 / nominal_us * 1000), 1000),
                       metadata=metadata)
    audit = _audit_context(verification, segments)  # before writing: it may refuse
    gaps: list[dict] = []
    try:
        for s in segments:
            decoded = 0
            for plaintext in decrypt_chunks(Path(s.path), agency_key, device_key):
                try:
                    frames = decode_chunk(plaintext)
                except ChunkFormatError as exc:
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
    report = {
        "format": REPORT_FORMAT, "version": REPORT_VERSION,
        "exported_utc": _iso(dt.datetime.now(dt.timezone.utc).timestamp() * 1e6),
        "device_id": first.device_id, "device_key_sha256": segments[0].device_key_fp,
        "recording_id": first.recording_id,
        "verification": {"ok": True, "problems": [], "segments_checked": len(verification.segments),
                         "audit_logs_checked": verification.audit_logs},
        "inputs": [item for s in segments for item in _input_hashes(Path(s.path))],
        "mp4": {"file": mp4_path.name, **mp4, "codec": "h264", "reencoded": False},
        "start_utc": _iso(first.first_utc_us), "end_utc": _iso(last.last_utc_us),
        "frame_count": mp4["frames"],
        "segments": [_segment_entry(s) for s in segments],
        "markers": [{"timestamp_us": mk.timestamp_us, "utc": _iso(mk.timestamp_us + s.manifest.utc_offset_us),
                     "offset_s": (mk.timestamp_us - first.first_ts_us) / 1e6, "label": mk.label}
                    for s in segments for mk in s.manifest.markers],
        "gaps": gaps,
        "recovered_segments": [Path(s.path).name for s in segments if s.manifest.recovered],
        "storage_full_segments": [Path(s.path).name for s in segments if s.manifest.storage_full],
        "audit": audit,
        "clock": {"utc_offset_us": sorted({s.manifest.utc_offset_us for s in segments}),
                  "sources": sorted({s.manifest.clock_source for s in segments}),
                  "note": "utc = frame timestamp_us + utc_offset_us of its segment"},
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
    start, end = _iso(first.first_utc_us), _iso(last.last_utc_us)
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
            "after_utc": _iso(before_ts + m.utc_offset_us), "gap_us": gap_us}


def _segment_entry(s: VerifiedSegment) -> dict:
    m = s.manifest
    return {"file": Path(s.path).name, "segment_seq": m.segment_seq, "index": m.index, "frames": m.frame_count,
            "chunks": len(m.chunk_digests), "first_timestamp_us": m.first_ts_us, "last_timestamp_us": m.last_ts_us,
            "first_utc": _iso(m.first_utc_us), "last_utc": _iso(m.last_utc_us), "utc_offset_us": m.utc_offset_us,
            "clock_source": m.clock_source, "recovered": m.recovered, "storage_full": m.storage_full,
            "manifest_sha256": m.digest.hex()}


def _input_hashes(segment: Path) -> list[dict]:
    return [{"file": p.name, "size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in (segment, segment.with_suffix(".manifest"))]


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _iso(utc_us: float) -> str:
    return dt.datetime.fromtimestamp(utc_us / 1e6, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Mp4Remuxer:
    """Copy H.264 Annex B access units into an MP4 (PyAV, no re-encode), streaming.

    The first frame must be a keyframe carrying SPS/PPS; the muxer takes the MP4's codec
    configuration from it. Each packet keeps its frame's timestamp (µs, relative to the
    first frame) and lasts until the next frame; the last lasts one nominal interval.
    """

    def __init__(self, partial_path: Path, rate: Fraction, metadata: dict[str, str] | None = None) -> None:
        self.partial_path = Path(partial_path)
        self.rate = rate
        self.metadata = dict(metadata or {})
        self.frames = 0
        self.previous_ts = 0
        self._container: Any = None
        self._stream: Any = None
        self._pending: Frame | None = None
        self._t0 = 0

    def add(self, frame: Frame) -> int:
        """Queue one frame; returns the time since the previous frame in µs (0 for the first)."""
        if self._pending is None and self._container is None:
            self._open(frame)
            self._pending, self._t0, self.previous_ts = frame, frame.timestamp_us, frame.timestamp_us
            return 0
        prev = self._pending
        assert prev is not None
        delta = frame.timestamp_us - prev.timestamp_us
        if delta <= 0:
            raise ExportError(f"frame timestamps do not increase ({prev.timestamp_us} then {frame.timestamp_us} µs)")
        self._mux(prev, delta)
        self._pending, self.previous_ts = frame, prev.timestamp_us
        return delta

    def finish(self, final_path: Path, first_utc_us: int) -> dict:
        """Flush, close, fsync and move into place (never over an existing file); returns facts."""
        import av

        if self._pending is None:
            raise ExportError("no frames to export")
        self._mux(self._pending, round(1_000_000 / self.rate))
        self._container.close()
        self._container = None
        _fsync_file(self.partial_path)
        try:
            os.link(self.partial_path, final_path)
        except FileExistsError:
            raise ExportError(f"{final_path} already exists; refusing to overwrite an export") from None
        self.partial_path.unlink()
        fsync_dir(final_path.parent)
        with av.open(str(final_path)) as check:  # read back: the file is an MP4 with every frame in it
            stream = check.streams.video[0]
            packets = sum(1 for p in check.demux(stream) if p.size)
            width, height = stream.codec_context.width, stream.codec_context.height
            duration = float(stream.duration * stream.time_base) if stream.duration else 0.0
        if packets != self.frames:
            raise ExportError(f"{final_path.name}: holds {packets} packets, {self.frames} were written")
        return {"sha256": sha256_file(final_path), "size": final_path.stat().st_size, "frames": self.frames,
                "width": width, "height": height, "duration_s": round(duration, 6),
                "time_base": "1/1000000", "first_frame_utc": _iso(first_utc_us)}

    def abort(self) -> None:
        """Drop the partial file after a failure."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - already failing; the partial file goes anyway
                pass
            self._container = None
        self.partial_path.unlink(missing_ok=True)

    def _open(self, frame: Frame) -> None:
        import av

        if not frame.keyframe:
            raise ExportError("recording does not start with a keyframe")
        width, height = _frame_size(frame.data)
        self.partial_path.unlink(missing_ok=True)  # left by an earlier crash: never evidence
        self._container = av.open(str(self.partial_path), "w", format="mp4")
        self._container.metadata.update(self.metadata)
        self._stream = self._container.add_mux_stream("h264", rate=self.rate, width=width, height=height)
        self._stream.time_base = TIME_BASE

    def _mux(self, frame: Frame, duration_us: int) -> None:
        import av

        packet = av.Packet(frame.data)
        packet.stream = self._stream
        packet.time_base = TIME_BASE
        packet.pts = packet.dts = frame.timestamp_us - self._t0
        packet.duration = duration_us
        packet.is_keyframe = frame.keyframe
        self._container.mux(packet)
        self.frames += 1


def _frame_size(keyframe: bytes) -> tuple[int, int]:
    """Width and height from decoding the first keyframe (decoding, not re-encoding)."""
    import av

    ctx = av.CodecContext.create("h264", "r")
    try:
        packets = ctx.parse(keyframe) + ctx.parse(None)
        for packet in packets:
            for image in ctx.decode(packet):
                return image.width, image.height
        for image in ctx.decode(None):
            return image.width, image.height
    except av.FFmpegError as exc:
        raise ExportError(f"first keyframe does not decode as H.264: {exc}") from None
    raise ExportError("first keyframe does not decode as H.264")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
