"""The tamper battery: every kind of alteration is caught by public-key verification, with its own reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from secure_store.errors import VerifyError
from secure_store.format import Manifest, iter_records, read_header
from secure_store.verify import decrypt_chunks, verify_path

SEG = "seg-{:010d}.seg"
MAN = "seg-{:010d}.manifest"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, keyset, h) -> Path:
    """One device's evidence: a 4-segment recording, plus its identity.json beside it."""
    base = tmp_path_factory.mktemp("pristine")
    root = h.provision_root(base / "device", keyset)
    store = h.open_store(root, keyset)
    h.record(store, "rec-1", segments=4, chunks=3)
    return root.root


@pytest.fixture
def case(pristine, tmp_path) -> Path:
    """A fresh copy of the pristine evidence tree to tamper with."""
    target = tmp_path / "case"
    shutil.copytree(pristine, target, ignore=shutil.ignore_patterns("keys"))
    return target


def problems(tree: Path) -> list[tuple[str, int | None, str]]:
    return [(p.file, p.chunk, p.reason) for p in verify_path(tree).problems]


def records(path: Path) -> tuple[bytes, list[bytes]]:
    with open(path, "rb") as f:
        _, raw = read_header(f)
        recs = list(iter_records(f, len(raw)))
    data = path.read_bytes()
    return raw, [data[r.offset:r.offset + 4 + len(r.body) + 32] for r in recs]


def only(found, file: str, chunk, words: str) -> None:
    assert len(found) == 1, found
    f, c, reason = found[0]
    assert (Path(f).name, c) == (file, chunk) and words in reason, found[0]


def test_pristine_copy_verifies(case, keyset) -> None:
    report = verify_path(case)
    assert report.ok and len(report.segments) == 4 and report.audit_logs, report.problems
    assert sum(len(list(decrypt_chunks(case / "evidence" / SEG.format(i), keyset.agency))) for i in (1, 2, 3, 4)) == 12


def test_bit_flip_in_a_chunk(case, keyset) -> None:
    seg = case / "evidence" / SEG.format(2)
    _, recs = records(seg)
    data = bytearray(seg.read_bytes())
    start = len(data) - sum(len(r) for r in recs) + len(recs[0]) + 4 + 21 + 10  # inside chunk 1's ciphertext
    data[start] ^= 0x04
    seg.write_bytes(bytes(data))
    only(problems(case), SEG.format(2), 1, "ciphertext altered")
    with pytest.raises(VerifyError, match="chunk 1"):
        list(decrypt_chunks(seg, keyset.agency))


def test_truncated_segment(case) -> None:
    seg = case / "evidence" / SEG.format(3)
    raw, recs = records(seg)
    seg.write_bytes(raw + b"".join(recs[:2]))
    only(problems(case), SEG.format(3), 2, "truncated: 2 of 4 chunks present")
    seg.write_bytes(raw + b"".join(recs[:2]) + recs[2][:50])
    only(problems(case), SEG.format(3), 2, "chunks complete")
    assert "truncated: torn chunk record at byte" in problems(case)[0][2]


def test_two_chunks_swapped(case) -> None:
    seg = case / "evidence" / SEG.format(2)
    raw, recs = records(seg)
    seg.write_bytes(raw + recs[1] + recs[0] + b"".join(recs[2:]))
    found = problems(case)
    assert [(c, r) for _, c, r in found] == [
        (0, "out of order: this is chunk 1 of the signed manifest (chunks reordered)"),
        (1, "out of order: this is chunk 0 of the signed manifest (chunks reordered)")]


def test_segment_deleted_from_the_middle(case) -> None:
    (case / "evidence" / SEG.format(2)).unlink()
    (case / "evidence" / MAN.format(2)).unlink()
    found = problems(case)
    assert any(c is None and r.startswith("missing: sequence 2 absent") for _, c, r in found), found
    assert any(r.startswith("missing: the audit log records this segment") for _, _, r in found), found


def test_newest_segment_deleted(case) -> None:
    (case / "evidence" / SEG.format(4)).unlink()
    (case / "evidence" / MAN.format(4)).unlink()
    only(problems(case), SEG.format(4), None, "missing: the audit log records this segment as sealed and never released")


def test_segment_file_deleted_but_manifest_kept(case) -> None:
    (case / "evidence" / SEG.format(3)).unlink()
    assert (SEG.format(3), None, "segment file missing for a signed manifest") in problems(case)


def test_two_segments_swapped(case) -> None:
    ev = case / "evidence"
    for pattern in (SEG, MAN):
        a, b = ev / pattern.format(2), ev / pattern.format(3)
        a.rename(ev / "tmp")
        b.rename(a)
        (ev / "tmp").rename(b)
    found = problems(case)
    assert sorted((Path(f).name, r.split(":")[0]) for f, _, r in found) == [
        (SEG.format(2), "misplaced"), (SEG.format(3), "misplaced")]


def test_copy_in_a_subdirectory_is_not_evidence(case) -> None:
    copy = case / "evidence" / "again"  # FORMAT.md: only seg-N files directly in evidence/ are evidence
    copy.mkdir()
    for pattern in (SEG, MAN):
        shutil.copy(case / "evidence" / pattern.format(2), copy)
    report = verify_path(case)
    assert report.ok and [s.manifest.segment_seq for s in report.segments] == [1, 2, 3, 4]


def test_segment_from_another_device_spliced_in(case, keyset, h, tmp_path) -> None:
    other_root = h.provision_root(tmp_path / "other", keyset, keyset.other_device, "CAM-0002")
    other = h.open_store(other_root, keyset, keyset.other_device, "CAM-0002")
    h.record(other, "rec-1", segments=2)
    for pattern in (SEG, MAN):
        shutil.copy(other_root.evidence / pattern.format(2), case / "evidence" / pattern.format(2))
    found = problems(case)
    assert found[0][0] == MAN.format(2) and "from another device" in found[0][2] and "CAM-0002" in found[0][2]
    assert any(r.startswith("missing: sequence 2") for _, _, r in found)


def test_manifest_re_signed_with_another_key(case, keyset) -> None:
    path = case / "evidence" / MAN.format(2)
    m = Manifest.parse(path.read_bytes())
    forged = Manifest(**{**m.__dict__, "frame_count": m.frame_count + 1})
    path.write_bytes(forged.signed_bytes() + keyset.other_device.sign(forged.signed_bytes()))
    found = problems(case)
    assert found[0][:2] == (MAN.format(2), None) and found[0][2].startswith("manifest signature invalid")
    # ...and with the forger's key fingerprint put in, too
    from secure_store import keys
    from secure_store.format import sha256
    forged = Manifest(**{**forged.__dict__, "device_key_fp": sha256(keys.raw_public(keyset.other_device.public_key()))})
    path.write_bytes(forged.signed_bytes() + keyset.other_device.sign(forged.signed_bytes()))
    assert problems(case)[0][2].startswith("signed by another key")


def test_header_fields_altered(case) -> None:
    seg = case / "evidence" / SEG.format(4)
    with open(seg, "rb") as f:
        header, raw = read_header(f)
    data = bytearray(seg.read_bytes())
    altered = header.__class__(**{**header.__dict__, "index": 9}).encode()
    assert len(altered) == len(raw)
    data[:len(raw)] = altered
    seg.write_bytes(bytes(data))
    only(problems(case), SEG.format(4), None, "header altered: its SHA-256 differs from the signed manifest (index changed)")


def test_unknown_version_refused(case) -> None:
    seg = case / "evidence" / SEG.format(1)
    data = bytearray(seg.read_bytes())
    data[9] = 2
    seg.write_bytes(bytes(data))
    only(problems(case), SEG.format(1), None, "format version 2 is not supported")


def test_audit_entry_altered_is_reported(case) -> None:
    log = sorted((case / "audit").glob("*.log"))[0]
    lines = log.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"segment_sealed", b"segment_sealer", 1)
    log.write_bytes(b"\n".join(lines))
    found = problems(case)
    assert found and all(r.startswith("audit log:") for _, _, r in found), found


def test_segment_changed_while_decrypting(case, keyset) -> None:
    seg = case / "evidence" / SEG.format(2)
    raw, recs = records(seg)
    chunks = decrypt_chunks(seg, keyset.agency)
    first = next(chunks)  # verified, first chunk decrypted
    assert first
    with open(seg, "r+b") as f:
        f.truncate(len(raw) + len(recs[0]) + len(recs[1]))
    with pytest.raises(VerifyError, match="2 of 4 chunks read"):
        list(chunks)
