"""Export sealed evidence for court: verify, decrypt, remux each recording to a signed MP4, report.

Everything under the path is verified with the device public key first
(``secure_store.verify``). A recording that a problem concerns is skipped (named, with the
problem) and the others are exported; a problem that could concern any recording (the audit
log, a segment without its manifest or missing from the log, the device key) exports
nothing (``ExportRefused``). With ``best_effort`` the damaged recordings are exported too,
with every chunk that still matches its signed manifest, and every chunk or segment left
out, every gap and every problem is named in the MP4's chapters, its C2PA manifest and both
reports.

Each recording is then exported on its own: its segments are decrypted with the agency
private key in chain order (pre-event footage included: it is the recording's first
segment), the H.264 access units are copied into a fast-start MP4 without re-encoding, with
the markers as chapters, the MP4 is signed with the agency export certificate (C2PA) when
one is given, and a JSON report and a self-contained HTML report are written beside it. A
recording that cannot be exported (no frames, a file changed since verification, an output
already there) is skipped with its reason; the others are still exported. Outputs are
written durably and never overwrite anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from recorder.chunk import ChunkFormatError, decode_chunk
from secure_store import hybrid, keys
from secure_store.durable import fsync_dir, write_atomic
from secure_store.errors import StoreError
from secure_store.format import read_header, sha256
from secure_store.keywrap import suite_mismatch
from secure_store.sources import as_path
from secure_store.verify import VerifiedSegment, VerifyReport, decrypt_chunks, verify_path

from export import provenance, report_html
from export.audio import muted_spans, recording_has_audio
from export.errors import ExportError, ExportRefused
from export.gpx import RecordingTrack
from export.mp4 import Chapter, Mp4Remuxer, iso_utc
from export.plan import RecordingPlan, attribute_problems, group_recordings, plan_recordings
from export.report import build_report, evidence_assertion, markers
from export.salvage import salvage_chunks
from export.thumbnails import thumbnails

log = logging.getLogger(__name__)

GAP_FACTOR = 1.5  # a frame interval this much longer than the nominal one is a gap
OUTPUT_SUFFIXES = (".mp4", ".json", ".html", ".gpx")

__all__ = ["export_evidence", "ExportResult", "ExportedRecording", "SkippedRecording", "group_recordings"]


@dataclass(frozen=True)
class ExportedRecording:
    recording_id: str
    mp4: Path
    report: Path
    frame_count: int
    mp4_sha256: str
    html: Path | None = None
    partial: bool = False
    signed: bool = False
    missing: tuple[str, ...] = ()


@dataclass(frozen=True)
class SkippedRecording:
    """A recording that was not exported, and why (one line)."""

    recording_id: str
    reason: str


@dataclass
class ExportResult:
    verification: VerifyReport
    recordings: list[ExportedRecording] = field(default_factory=list)
    skipped: list[SkippedRecording] = field(default_factory=list)
    best_effort: bool = False

    @property
    def ok(self) -> bool:
        """True when everything verified, nothing was skipped and no export is partial."""
        return not (self.skipped or self.verification.problems or any(r.partial for r in self.recordings))


def export_evidence(path: Path, agency_key: "x25519.X25519PrivateKey | hybrid.HybridAgencyKey", out_dir: Path,
                    device_key: ed25519.Ed25519PublicKey | None = None, *,
                    signer: provenance.ExportSigner | None = None, trust_root: bytes | None = None,
                    best_effort: bool = False) -> ExportResult:
    """Verify everything under ``path``, then write an MP4, a JSON and an HTML report per recording.

    ``signer``: the agency export certificate and key (C2PA); without it the MP4s are unsigned
    and the reports say so. ``trust_root``: the agency root certificate (PEM) the reports name
    and each signed MP4 is checked against before it is reported.
    """
    path, out_dir = as_path(path), Path(out_dir)
    try:
        verification = verify_path(path, device_key)
    except StoreError as exc:
        raise ExportError(str(exc)) from None
    if verification.problems and not best_effort and (attribute_problems(verification)[1]
                                                      or not verification.segments):
        raise ExportRefused([str(p) for p in verification.problems])  # nothing can be vouched for
    if not verification.segments:
        raise ExportError(f"{path}: no sealed segments to export")
    root = _trust_root(trust_root) if trust_root else None
    foreign = _sealed_to_another_key(verification.segments, agency_key)
    plans = plan_recordings(path, verification, device_key, best_effort)
    _output_directory(out_dir)
    result = ExportResult(verification, best_effort=best_effort)
    for plan in plans:
        try:
            if plan.problems and not best_effort:
                raise ExportError(f"does not verify ({len(plan.problems)} problem(s), first: {plan.problems[0]}); "
                                  "--best-effort exports what of it verifies")
            if any(s.path in foreign for s in plan.segments):
                raise ExportError(next(foreign[s.path] for s in plan.segments if s.path in foreign))
            result.recordings.append(_export_recording(plan, agency_key, device_key, out_dir, verification,
                                                       signer, root, best_effort))
        except (ExportError, StoreError, OSError) as exc:  # StoreError: e.g. a file changed since verification
            reason = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and exc.filename else str(exc)
            log.warning("recording %s not exported: %s", plan.recording_id, reason)
            result.skipped.append(SkippedRecording(plan.recording_id, reason))
    return result


def _output_directory(out_dir: Path) -> None:
    """Create ``out_dir`` if only it is missing (a typo'd parent is an error, not a new tree); it must be writable."""
    if not out_dir.is_dir():
        try:
            out_dir.mkdir()
        except FileExistsError:
            raise ExportError(f"{out_dir}: exists and is not a directory") from None
        except FileNotFoundError:
            if out_dir.parent.is_dir():
                raise ExportError(f"{out_dir}: cannot create the output directory there") from None
            raise ExportError(f"{out_dir.parent}: no such directory (create it first, or check --out)") from None
        except OSError as exc:
            raise ExportError(f"{out_dir}: cannot create the output directory: {exc.strerror}") from None
        fsync_dir(out_dir.parent)
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise ExportError(f"{out_dir}: not writable")


def _trust_root(pem: bytes) -> dict[str, Any]:
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise ExportError("trust root is not a PEM certificate") from None
    der = cert.public_bytes(serialization.Encoding.DER)
    return {"subject": cert.subject.rfc4514_string(), "sha256": hashlib.sha256(der).hexdigest(),
            "pem": cert.public_bytes(serialization.Encoding.PEM).decode()}


def _sealed_to_another_key(segments: list[VerifiedSegment], agency_key: x25519.X25519PrivateKey) -> dict[str, str]:
    """Segment path -> why, for each segment this agency key cannot open. All of them: refuse before writing."""
    fingerprint = sha256(keys.raw_public(agency_key.public_key()))
    foreign = {}
    for s in segments:
        try:
            with as_path(s.path).open("rb") as f:
                header, _ = read_header(f, Path(s.path).name)
        except (OSError, StoreError) as exc:
            raise ExportError(f"{Path(s.path).name}: cannot read its header: {exc}") from None
        wrong_kind = suite_mismatch(header.suite, agency_key, Path(s.path).name)
        if wrong_kind:
            foreign[s.path] = wrong_kind
        elif header.agency_key_fp != fingerprint:
            foreign[s.path] = (f"{Path(s.path).name}: sealed to another agency key "
                               f"({header.agency_key_fp.hex()[:16]}, not {fingerprint.hex()[:16]})")
    if segments and len(foreign) == len(segments):
        raise ExportError(f"{foreign[segments[0].path]}; nothing exported")
    return foreign


def _export_recording(plan: RecordingPlan, agency_key: x25519.X25519PrivateKey,
                      device_key: ed25519.Ed25519PublicKey | None, out_dir: Path, verification: VerifyReport,
                      signer: provenance.ExportSigner | None, root: dict[str, Any] | None,
                      best_effort: bool) -> ExportedRecording:
    if not plan.segments:
        raise ExportError("no segment of it verifies: " + "; ".join(why for _, why in plan.excluded))
    segments = plan.segments
    if sum(s.manifest.frame_count for s in segments) == 0:
        recovered = any(s.manifest.recovered for s in segments)
        raise ExportError("no frames to export" + (" (closed by power-loss recovery before any video reached the "
                                                   "disk)" if recovered else ""))
    first = segments[0].manifest
    stem = plan.stem
    paths = {suffix: out_dir / (stem + suffix) for suffix in OUTPUT_SUFFIXES}
    for p in paths.values():
        if p.exists():
            raise ExportError(f"{p} already exists; refusing to overwrite an export")
    nominal_us = _nominal_interval_us(segments)
    chapters = _chapters(plan, nominal_us)
    metadata = {"creation_time": iso_utc(first.first_utc_us),
                "comment": f"bodycam evidence export{' (PARTIAL)' if plan.partial else ''}: device "
                           f"{first.device_id}, recording {first.recording_id}; see {paths['.html'].name}"}
    has_sound = recording_has_audio(p for s in segments for p in _chunks(s, plan, agency_key, device_key, []))
    muxer = Mp4Remuxer(out_dir / f".{stem}.mp4.partial", rate=Fraction(round(1_000_000 / nominal_us * 1000), 1000),
                       metadata=metadata, chapters=chapters, audio=has_sound)
    gaps: list[dict] = []
    c2pa = _c2pa_facts(None, None, root)

    def seal(src: Path, dst: Path) -> None:  # before the MP4 is moved into place: a bad one never lands
        nonlocal c2pa
        title = paths[".mp4"].name
        facts = evidence_assertion(plan, verification, gaps, best_effort)
        provenance.sign_mp4(src, dst, signer, provenance.manifest_definition(title, facts))
        c2pa = _c2pa_facts(dst, signer, root, title)
    track = RecordingTrack()  # the GPS fixes sealed in the chunks (export.gpx)
    try:
        lost: list[dict] = []  # chunks of damaged segments left out (best effort)
        last_utc = iso_utc(first.first_utc_us)
        for s in segments:
            decoded = 0
            for plaintext in _chunks(s, plan, agency_key, device_key, lost):
                try:
                    frames = decode_chunk(plaintext)
                except ChunkFormatError as exc:
                    raise ExportError(f"{Path(s.path).name}: chunk plaintext does not parse: {exc}") from None
                track.add_chunk(plaintext, s.manifest.utc_offset_us)
                for frame in frames:
                    if frame.audio:
                        muxer.add_audio(frame)
                        continue
                    decoded += 1
                    gap = muxer.add(frame)
                    if gap > GAP_FACTOR * nominal_us:
                        gaps.append(_gap(s, muxer.previous_ts, gap))
                    utc = iso_utc(frame.timestamp_us + s.manifest.utc_offset_us)
                    for item in lost:
                        if item["to_utc"] is None:  # the loss lies between the last frame before and this one
                            item["from_utc"], item["to_utc"] = item["from_utc"] or last_utc, utc
                    last_utc = utc
            if decoded != s.manifest.frame_count and s.path not in plan.damaged:
                raise ExportError(f"{Path(s.path).name}: decrypted {decoded} frames but the manifest says "
                                  f"{s.manifest.frame_count}")
        for item in lost:  # lost at the very end: from the last frame there is
            item["from_utc"] = item["from_utc"] or last_utc
        plan.missing += lost
        # A gap inside a segment shows only while decrypting: then the chapters are written again.
        final_chapters = _chapters(plan, nominal_us, [(g["after_timestamp_us"], g["gap_us"]) for g in gaps])
        mp4 = muxer.finish(paths[".mp4"], first_utc_us=first.first_utc_us, seal=seal if signer else None,
                           chapters=final_chapters)
    except BaseException:
        muxer.abort()
        raise
    written = [paths[".mp4"]]
    try:  # an MP4 never stays without its reports
        stills = thumbnails(paths[".mp4"], _still_times(mp4["duration_s"], markers(segments)))
        gpx_name = None
        if track.fixes:
            track.write_gpx(paths[".gpx"], f"{first.device_id} {first.recording_id}")
            written.append(paths[".gpx"])
            gpx_name = paths[".gpx"].name
        report = build_report(plan, verification, mp4, gaps, c2pa, best_effort, track, gpx_name)
        report["muted_spans"] = muted_spans(segments, iso_utc)  # the officer's mutes (export/audio.py)
        report_bytes = json.dumps(report, indent=2, sort_keys=True).encode() + b"\n"
        write_atomic(paths[".json"], report_bytes, 0o644, overwrite=False)
        written.append(paths[".json"])
        outputs = [{"file": paths[".mp4"].name, "size": mp4["size"], "sha256": mp4["sha256"]},
                   {"file": paths[".json"].name, "size": len(report_bytes),
                    "sha256": hashlib.sha256(report_bytes).hexdigest()}]
        html = report_html.render(report, stills, outputs).encode()
        write_atomic(paths[".html"], html, 0o644, overwrite=False)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    log.info("exported %s: %d frames, %s", paths[".mp4"].name, mp4["frames"], paths[".html"].name)
    return ExportedRecording(first.recording_id, paths[".mp4"], paths[".json"], mp4["frames"], mp4["sha256"],
                             paths[".html"], plan.partial, signer is not None,
                             tuple(_missing_line(m) for m in plan.missing))


def _missing_line(m: dict[str, Any]) -> str:
    return f"{m['what']} ({m.get('from_utc') or '?'} to {m.get('to_utc') or '?'}): {m['reason']}"


def _chunks(s: VerifiedSegment, plan: RecordingPlan, agency_key: x25519.X25519PrivateKey,
            device_key: ed25519.Ed25519PublicKey | None, lost: list[dict]) -> Iterator[bytes]:
    """Each chunk's plaintext; for a damaged segment only the authentic ones, the others noted in ``lost``."""
    if s.path not in plan.damaged:
        yield from decrypt_chunks(as_path(s.path), agency_key, device_key)
        return
    name = Path(s.path).name
    for chunk in salvage_chunks(as_path(s.path), s.manifest, agency_key):
        if chunk.plaintext is not None:
            yield chunk.plaintext
            continue
        lost.append({"index": s.manifest.index, "what": f"{name} chunk {chunk.index}", "from_utc": None,
                     "to_utc": None, "reason": f"{chunk.lost}; left out (best effort)"})


def _c2pa_facts(mp4: Path | None, signer: provenance.ExportSigner | None, root: dict[str, Any] | None,
                title: str = "") -> dict[str, Any]:
    """What the reports say about the MP4's Content Credentials, checked by reading them back."""
    public_root = {k: v for k, v in root.items() if k != "pem"} if root else None
    if signer is None or mp4 is None:
        return {"signed": False, "signer": None, "issuer": None, "trust_root": public_root, "check": None}
    check = provenance.check_mp4(mp4, root["pem"] if root else None)
    if check.state == "Invalid" or (root and not check.trusted):
        raise ExportError(f"{title}: its C2PA manifest reads {check.state} right after signing "
                          f"({'; '.join(check.failures) or 'export certificate not issued under the trust root'})")
    return {"signed": True, "signer": signer.subject, "issuer": signer.issuer, "check": check.state,
            "trust_root": public_root, "certificate_chain_pem": signer.chain_pem}


def _chapters(plan: RecordingPlan, nominal_us: float, holes: list[tuple[int, int]] | None = None) -> list[Chapter]:
    """Markers and gaps as chapters. ``holes``: (last timestamp before, µs to the next frame) of each gap;
    by default the holes between this export's segments, which the signed manifests reveal before decrypting."""
    segments = plan.segments
    t0 = segments[0].manifest.first_ts_us
    end = segments[-1].manifest.last_ts_us - t0 + round(nominal_us)
    if holes is None:
        pairs = [(a.manifest.last_ts_us, b.manifest.first_ts_us - a.manifest.last_ts_us)
                 for a, b in zip(segments, segments[1:])]
        holes = [(before, hole) for before, hole in pairs if hole > GAP_FACTOR * nominal_us]
    points = [(mk.timestamp_us - t0, mk.label) for s in segments for mk in s.manifest.markers]
    for before_ts, hole_us in holes:
        seqs = [s.manifest for s in segments]
        prev = max((m for m in seqs if m.first_ts_us <= before_ts), key=lambda m: m.first_ts_us, default=seqs[0])
        after = min((m for m in seqs if m.first_ts_us > before_ts), key=lambda m: m.first_ts_us, default=None)
        absent = [m for m in plan.missing if after is not None and prev.index < m["index"] < after.index]
        what = f", {len(absent)} segment(s) missing" if absent else ""
        title = f"GAP: {(hole_us - nominal_us) / 1e6:.1f} s without video{what}"
        points.append((before_ts - t0 + round(nominal_us), title))
    points.sort(key=lambda p: p[0])
    if points and points[0][0] > 0:  # a chapter track's first chapter starts at 0 whatever it says: name that span
        points.insert(0, (0, "start"))
    chapters = []
    for i, (start, title) in enumerate(points):
        start = min(max(start, 0), end - 1)
        stop = points[i + 1][0] if i + 1 < len(points) else end
        chapters.append(Chapter(start, max(stop, start + 1), title))
    return chapters


def _still_times(duration_s: float, marks: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """Start, each marker, end."""
    return [("start", 0.0)] + [(f"marker: {m['label']}", m["offset_s"]) for m in marks] + [("end", duration_s)]


def _nominal_interval_us(segments: list[VerifiedSegment]) -> float:
    """The frame interval the device recorded at, from the signed counts and times."""
    rates = [(m.last_ts_us - m.first_ts_us) / (m.frame_count - 1)
             for m in (s.manifest for s in segments) if m.frame_count > 1 and m.last_ts_us > m.first_ts_us]
    return min(rates) if rates else 1_000_000 / 30


def _gap(segment: VerifiedSegment, before_ts: int, gap_us: int) -> dict:
    m = segment.manifest
    return {"segment": Path(segment.path).name, "after_timestamp_us": before_ts,
            "after_utc": iso_utc(before_ts + m.utc_offset_us), "gap_us": gap_us}
