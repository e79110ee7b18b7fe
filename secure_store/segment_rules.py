"""Reader rules for one segment: the manifest's fields, its header, every chunk record (FORMAT.md M, S, C).

Each rule that fails is a ``Problem`` naming the file, the chunk (if any) and the reason;
the caller (``secure_store.verify``) has already checked the manifest's signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from secure_store.errors import FormatError, TornRecordError
from secure_store.format import Manifest, SegmentHeader, iter_records, read_header, sha256
from secure_store.sealer import segment_stem


@dataclass(frozen=True)
class Problem:
    """One verification failure: which file, which chunk (or None), why."""

    file: str
    chunk: int | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}: chunk {self.chunk}" if self.chunk is not None else self.file
        return f"{where}: {self.reason}"


def manifest_problems(manifest: Manifest, name: str) -> list[Problem]:
    """The manifest's signed fields against each other (FORMAT.md, reader rules M1-M4)."""
    m, out = manifest, []
    if m.first_utc_us != m.first_ts_us + m.utc_offset_us or m.last_utc_us != m.last_ts_us + m.utc_offset_us:
        out.append(Problem(name, None, "signed times disagree: first/last UTC is not timestamp + UTC offset"))
    if m.first_ts_us > m.last_ts_us:
        out.append(Problem(name, None, "signed times disagree: first timestamp after the last"))
    if m.frame_count == 0 and (m.first_ts_us or m.last_ts_us):
        out.append(Problem(name, None, "signed times disagree: no frames but a non-zero first or last timestamp"))
    if not m.chunk_digests and not m.recovered:
        out.append(Problem(name, None, "sealed segment lists no chunk (not even its final chunk)"))
    return out


_REPEATED = ("segment_seq", "recording_id", "index", "device_id", "device_key_fp", "utc_offset_us", "clock_source")


def _header_problems(name: str, header, manifest: Manifest) -> list[Problem]:
    """Header fields the manifest repeats must be equal (M5), even when both are validly signed."""
    fields = [k for k in _REPEATED if getattr(header, k) != getattr(manifest, k)]
    return [Problem(name, None, f"header and manifest disagree on {', '.join(fields)}")] if fields else []


def _shape_problems(name: str, metas: list, manifest: Manifest) -> list[Problem]:
    """The chunk records' clear metadata against the manifest: counts, times, the final chunk (C3-C7)."""
    out: list[Problem] = []
    gops = [(i, m) for i, m, _ in metas if not m.final]
    for i, meta, ct_len in metas:
        if meta.final:
            if meta.frame_count or ct_len != 16:
                out.append(Problem(name, i, "final chunk is not empty (frames or plaintext in it)"))
            if not meta.first_ts_us == meta.last_ts_us == manifest.last_ts_us:
                out.append(Problem(name, i, "final chunk's timestamps are not the segment's last timestamp"))
        elif meta.frame_count == 0:
            out.append(Problem(name, i, "a GOP chunk with no frames"))
        elif meta.first_ts_us > meta.last_ts_us or (meta.frame_count == 1 and meta.first_ts_us != meta.last_ts_us):
            out.append(Problem(name, i, "chunk's first and last timestamps disagree with its frame count"))
    for (_, a), (j, b) in zip(gops, gops[1:]):
        if b.first_ts_us < a.last_ts_us:
            out.append(Problem(name, j, "chunk starts before the chunk before it ends (timestamps go back)"))
    frames = sum(m.frame_count for _, m in gops)
    if frames != manifest.frame_count:
        out.append(Problem(name, None, f"manifest says {manifest.frame_count} frames, its chunks hold {frames}"))
    elif gops and (gops[0][1].first_ts_us != manifest.first_ts_us or gops[-1][1].last_ts_us != manifest.last_ts_us):
        out.append(Problem(name, None, "manifest's first/last timestamp differs from its chunks'"))
    return out


def check_segment_file(path: Path, manifest: Manifest,
                       on_header: Callable[[SegmentHeader], None] | None = None) -> list[Problem]:
    """Header, every chunk digest, order, chunk shapes, final chunk and truncation against a verified manifest.

    ``on_header`` is given the parsed header (e.g. for its suite): the file is read once, also from a bucket.
    """
    name, problems = path.name, manifest_problems(manifest, path.name)
    if path.stem != segment_stem(manifest.segment_seq):
        problems.append(Problem(name, None, f"misplaced: file name says {path.stem} but its manifest is "
                                            f"sequence {manifest.segment_seq} (segments renamed or swapped)"))
    expected = manifest.chunk_digests
    metas: list = []
    try:
        with path.open("rb") as f:
            header, raw = read_header(f, name)
            if on_header is not None:
                on_header(header)
            if sha256(raw) != manifest.header_digest:
                fields = [k for k in _REPEATED if getattr(header, k) != getattr(manifest, k)]
                problems.append(Problem(name, None, "header altered: its SHA-256 differs from the signed manifest"
                                        + (f" ({', '.join(fields)} changed)" if fields else "")))
            else:
                problems.extend(_header_problems(name, header, manifest))
            count = 0
            try:
                for record in iter_records(f, len(raw), name):
                    count += 1
                    found = _check_record(name, record, expected, manifest.recovered)
                    problems.extend(found)
                    if not found and record.index < len(expected):
                        metas.append((record.index, record.meta, len(record.ciphertext)))
            except TornRecordError as exc:
                return problems + [Problem(name, exc.chunk, f"truncated: torn chunk record at byte {exc.good_end}; "
                                                            f"{count} of {len(expected)} chunks complete")]
    except FormatError as exc:
        return problems + [Problem(name, None, str(exc))]
    except OSError as exc:
        return problems + [Problem(name, None, f"cannot read: {exc.strerror}")]
    if count < len(expected):
        problems.append(Problem(name, count, f"truncated: {count} of {len(expected)} chunks present"))
    elif count > len(expected):
        problems.append(Problem(name, len(expected), f"{count - len(expected)} chunk(s) not in the signed manifest"))
    if not problems:
        problems.extend(_shape_problems(name, metas, manifest))
    return problems


def _check_record(name: str, record, expected: tuple[bytes, ...], recovered: bool) -> list[Problem]:
    i = record.index
    if i >= len(expected):
        return []
    if record.digest != expected[i]:
        if record.digest in expected:
            j = expected.index(record.digest)
            return [Problem(name, i, f"out of order: this is chunk {j} of the signed manifest (chunks reordered)")]
        return [Problem(name, i, "ciphertext altered: SHA-256 does not match the signed manifest")]
    if record.stored_digest != record.digest:
        return [Problem(name, i, "record digest field altered")]
    last = i == len(expected) - 1
    if record.meta.final and not last:
        return [Problem(name, i, "final-chunk flag wrong: chunk marked final before the end")]
    if last and not record.meta.final and not recovered:
        return [Problem(name, i, "final-chunk flag wrong: sealed segment does not end in its final chunk")]
    return []
