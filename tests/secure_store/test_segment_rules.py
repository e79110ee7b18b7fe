"""The reader rules of one sealed segment (FORMAT.md M, S, C), each Problem checked whole.

A court's independent verifier implements the same rules, so the report must name the same file,
the same chunk and the same reason. A real segment is sealed, then altered byte by byte; the
manifest is changed as a key holder could re-sign it (``check_segment_file`` is given a manifest
whose signature the caller has already checked).
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from pathlib import Path

import pytest

from secure_store.format import RECORD_META, Manifest, iter_records, read_header
from secure_store.segment_rules import Problem, check_segment_file

NAME = "seg-0000000001.seg"


@pytest.fixture
def sealed(device, h) -> tuple[Path, Manifest]:
    """One sealed segment of 3 GOP chunks (5 frames each) and its final chunk; the file is writable."""
    store = device()
    h.record(store, segments=1, chunks=3)
    seg = store.root.evidence / NAME
    seg.chmod(0o644)
    return seg, Manifest.parse((store.root.evidence / "seg-0000000001.manifest").read_bytes())


def records(seg: Path) -> list:
    with open(seg, "rb") as f:
        _, raw = read_header(f, seg.name)
        return list(iter_records(f, len(raw), seg.name))


def rewrite(seg: Path, manifest: Manifest, index: int, meta_edit, **changes) -> Manifest:
    """Change one record's clear meta, fix both its digests and the manifest's (as a key holder could)."""
    r = records(seg)[index]
    body = RECORD_META.pack(*meta_edit(*RECORD_META.unpack(r.meta.encode()))) + r.ciphertext
    data = bytearray(seg.read_bytes())
    data[r.offset:r.offset + 4 + len(r.body) + 32] = struct.pack(">I", len(body)) + body + hashlib.sha256(body).digest()
    seg.write_bytes(bytes(data))
    digests = list(manifest.chunk_digests)
    digests[index] = hashlib.sha256(body).digest()
    return dataclasses.replace(manifest, chunk_digests=tuple(digests), **changes)


def test_pristine_segment_has_no_problem(sealed) -> None:
    seg, manifest = sealed
    assert check_segment_file(seg, manifest) == []


# --- chunk records (C1, C2) ----------------------------------------------------------------------

def test_record_digest_field_altered_is_named_with_file_chunk_and_reason(sealed) -> None:
    seg, manifest = sealed
    r = records(seg)[1]
    data = bytearray(seg.read_bytes())
    data[r.offset + 4 + len(r.body) + 5] ^= 0x40
    seg.write_bytes(bytes(data))
    assert check_segment_file(seg, manifest) == [Problem(NAME, 1, "record digest field altered")]


def test_last_chunk_without_the_final_flag_is_refused(sealed) -> None:
    seg, manifest = sealed
    manifest = rewrite(seg, manifest, 3, lambda fl, n, a, b: (fl & ~1, n, a, b))
    assert check_segment_file(seg, manifest) == [
        Problem(NAME, 3, "final-chunk flag wrong: sealed segment does not end in its final chunk")]


def test_a_chunk_appended_after_the_signed_ones_is_counted(sealed) -> None:
    seg, manifest = sealed
    r = records(seg)[3]
    data = seg.read_bytes()
    seg.write_bytes(data + data[r.offset:r.offset + 4 + len(r.body) + 32])
    assert check_segment_file(seg, manifest) == [Problem(NAME, 4, "1 chunk(s) not in the signed manifest")]


def test_bad_magic_names_the_file(sealed) -> None:
    seg, manifest = sealed
    data = bytearray(seg.read_bytes())
    data[0] ^= 0xFF
    seg.write_bytes(bytes(data))
    assert check_segment_file(seg, manifest) == [Problem(NAME, None, f"{NAME}: not a bodycam segment (bad magic)")]


def test_unreadable_segment_says_why(sealed, tmp_path) -> None:
    _, manifest = sealed
    (tmp_path / NAME).mkdir()
    assert check_segment_file(tmp_path / NAME, manifest) == [Problem(NAME, None, "cannot read: Is a directory")]


# --- chunk shapes (C3-C7) ----------------------------------------------------------------------

def test_final_chunk_mistimed(sealed) -> None:
    seg, manifest = sealed
    manifest = rewrite(seg, manifest, 3, lambda fl, n, a, b: (fl, n, a - 1, b - 1))
    assert check_segment_file(seg, manifest) == [
        Problem(NAME, 3, "final chunk's timestamps are not the segment's last timestamp")]


def test_zero_frame_gop_chunk_and_the_frame_total(sealed) -> None:
    seg, manifest = sealed
    manifest = rewrite(seg, manifest, 1, lambda fl, n, a, b: (fl, 0, a, b))
    assert check_segment_file(seg, manifest) == [
        Problem(NAME, 1, "a GOP chunk with no frames"),
        Problem(NAME, None, "manifest says 15 frames, its chunks hold 10")]


def test_single_frame_chunk_spanning_two_times(sealed) -> None:
    seg, manifest = sealed
    manifest = rewrite(seg, manifest, 1, lambda fl, n, a, b: (fl, 1, a, b), frame_count=11)
    assert check_segment_file(seg, manifest) == [
        Problem(NAME, 1, "chunk's first and last timestamps disagree with its frame count")]


def test_chunk_starting_before_the_previous_one_ends(sealed, h) -> None:
    seg, manifest = sealed
    manifest = rewrite(seg, manifest, 2, lambda fl, n, a, b: (fl, n, a - h.FRAME_US - 1, b))
    assert check_segment_file(seg, manifest) == [
        Problem(NAME, 2, "chunk starts before the chunk before it ends (timestamps go back)")]


# --- the manifest's signed fields against each other (M2-M4) --------------------------------------

def _times(manifest: Manifest, first: int, last: int) -> Manifest:
    off = manifest.utc_offset_us
    return dataclasses.replace(manifest, first_ts_us=first, last_ts_us=last,
                               first_utc_us=first + off, last_utc_us=last + off)


def test_manifest_first_timestamp_after_the_last(sealed) -> None:
    seg, manifest = sealed
    manifest = _times(manifest, manifest.last_ts_us + 1, manifest.last_ts_us)
    assert check_segment_file(seg, manifest)[0] == Problem(
        NAME, None, "signed times disagree: first timestamp after the last")


def test_manifest_with_no_frames_but_times(sealed) -> None:
    seg, manifest = sealed
    manifest = dataclasses.replace(manifest, frame_count=0)
    assert check_segment_file(seg, manifest)[0] == Problem(
        NAME, None, "signed times disagree: no frames but a non-zero first or last timestamp")


def test_sealed_manifest_listing_no_chunk(sealed) -> None:
    seg, manifest = sealed
    manifest = dataclasses.replace(manifest, chunk_digests=())
    assert check_segment_file(seg, manifest) == [
        Problem(NAME, None, "sealed segment lists no chunk (not even its final chunk)"),
        Problem(NAME, 0, "4 chunk(s) not in the signed manifest")]
