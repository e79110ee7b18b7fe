"""decrypt_chunks re-checks what it reads against what it verified: a file changed in between.

``decrypt_chunks`` verifies a segment, then opens it again to decrypt. Whoever can write the
file (a compromised export host, a second process) can swap it in that gap. These tests make
the change at exactly that point — right after the real ``verify_segment`` returns — and check
that no plaintext from a changed file is handed out as verified: the header, a chunk, an
extra record and a missing one are each refused by name, after only the chunks that still match.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from recorder.chunk import decode_chunk
from secure_store import verify
from secure_store.errors import VerifyError
from secure_store.format import iter_records, read_header


def _records(seg: Path):
    with open(seg, "rb") as f:
        _, raw = read_header(f, seg.name)
        return list(iter_records(f, len(raw), seg.name))


def _record_bytes(seg: Path, record) -> bytes:
    return seg.read_bytes()[record.offset:record.offset + 4 + len(record.body) + 32]


@pytest.fixture
def sealed(device, h):
    """(segment 1, segment 2) of one recording, three GOPs each (frames 0-14 and 15-29)."""
    store = device()
    h.record(store, segments=2)
    return store.root.evidence / "seg-0000000001.seg", store.root.evidence / "seg-0000000002.seg"


def changed_after_verification(monkeypatch, change):
    """Run ``change(segment)`` the moment the real verification of ``segment`` has passed."""
    real = verify.verify_segment

    def verify_then_change(segment, *args, **kwargs):
        result = real(segment, *args, **kwargs)
        assert not result[1], result[1]          # it did verify, before the change
        change(Path(segment))
        return result

    monkeypatch.setattr(verify, "verify_segment", verify_then_change)


def _rewrite(seg: Path, data: bytes) -> None:
    seg.chmod(0o644)
    seg.write_bytes(data)


def _decrypt_until_refused(seg: Path, keyset, h, match: str) -> list[list[int]]:
    """Frame numbers of each chunk handed out before the VerifyError naming ``match``."""
    got = []
    with pytest.raises(VerifyError, match=match):
        for plaintext in verify.decrypt_chunks(seg, keyset.agency, keyset.device.public_key()):
            got.append(h.frame_numbers(decode_chunk(plaintext)))
    return got


def test_unchanged_file_decrypts_every_chunk(sealed, keyset, h):
    seg, _ = sealed
    chunks = list(verify.decrypt_chunks(seg, keyset.agency, keyset.device.public_key()))
    assert [h.frame_numbers(decode_chunk(c)) for c in chunks] == [
        list(range(0, 5)), list(range(5, 10)), list(range(10, 15))]


def test_a_header_swapped_after_verification_is_refused_before_any_chunk(sealed, keyset, h, monkeypatch):
    seg, other = sealed
    changed_after_verification(monkeypatch, lambda s: _rewrite(s, other.read_bytes()))
    got = _decrypt_until_refused(seg, keyset, h, r"^seg-0000000001\.seg: header changed since it was verified$")
    assert got == []                              # segment 2's footage never came out as segment 1's


def test_a_chunk_changed_after_verification_stops_decryption_at_that_chunk(sealed, keyset, h, monkeypatch):
    seg, _ = sealed
    second = _records(seg)[1]

    def flip(s: Path) -> None:
        data = bytearray(s.read_bytes())
        data[second.offset + 4 + len(second.body) - 3] ^= 1      # inside chunk 1's ciphertext
        _rewrite(s, bytes(data))

    changed_after_verification(monkeypatch, flip)
    got = _decrypt_until_refused(seg, keyset, h, r"^seg-0000000001\.seg: chunk 1 changed since it was verified$")
    assert got == [list(range(0, 5))]


def test_a_chunk_replaced_by_another_valid_record_is_refused(sealed, keyset, h, monkeypatch):
    """Chunk 2 overwritten by chunk 0's record: a record that decrypts, in the wrong place."""
    seg, _ = sealed
    records = _records(seg)
    first, third = _record_bytes(seg, records[0]), _record_bytes(seg, records[2])
    assert len(first) == len(third)

    def replace(s: Path) -> None:
        data = s.read_bytes()
        _rewrite(s, data[:records[2].offset] + first + data[records[2].offset + len(third):])

    changed_after_verification(monkeypatch, replace)
    got = _decrypt_until_refused(seg, keyset, h, r"^seg-0000000001\.seg: chunk 2 changed since it was verified$")
    assert got == [list(range(0, 5)), list(range(5, 10))]


def test_an_extra_record_appended_after_verification_is_refused(sealed, keyset, h, monkeypatch):
    seg, _ = sealed
    records = _records(seg)
    count = len(records)
    extra = _record_bytes(seg, records[1])
    changed_after_verification(monkeypatch, lambda s: _rewrite(s, s.read_bytes() + extra))
    got = _decrypt_until_refused(seg, keyset, h,
                                 rf"^seg-0000000001\.seg: chunk {count} changed since it was verified$")
    assert got == [list(range(0, 5)), list(range(5, 10)), list(range(10, 15))]


def test_a_record_cut_off_after_verification_is_refused(sealed, keyset, h, monkeypatch):
    seg, _ = sealed
    records = _records(seg)
    last = records[-1]
    changed_after_verification(monkeypatch, lambda s: _rewrite(s, s.read_bytes()[:last.offset]))
    got = _decrypt_until_refused(
        seg, keyset, h,
        rf"^seg-0000000001\.seg: {len(records) - 1} of {len(records)} chunks read \(changed since verified\)$")
    assert len(got) == len([r for r in records[:-1] if not r.meta.final])
