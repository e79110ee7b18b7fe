"""Recovery, case by case: each state a power cut can leave, closed without losing anything verifiable."""

from __future__ import annotations

import os
from pathlib import Path

from recorder.chunk import decode_chunk
from secure_store.audit import read_entries
from secure_store.chain import ChainHead, load_head, save_head
from secure_store.verify import decrypt_chunks, read_manifest, verify_path


def crash_mid_segment(store, h, chunks: int = 3):
    """Seal ``chunks`` GOPs of a segment, then 'lose power': the process forgets everything."""
    sealer = store.open_sealer()
    sealer.begin_segment("rec-1", 0)
    for g in range(chunks):
        sealer.write_chunk(h.gop(g * 5))
    os.close(sealer._fd)  # the kernel closes it when the process dies; nothing else is flushed
    return store.root.evidence / "seg-0000000001.seg"


def frames_of(seg: Path, agency) -> list:
    return [f for c in decrypt_chunks(seg, agency) for f in decode_chunk(c)]


def test_torn_tail_is_dropped_and_complete_chunks_kept(device, keyset, h) -> None:
    store = device("cam")
    seg = crash_mid_segment(store, h)
    size = seg.stat().st_size
    with open(seg, "r+b") as f:
        f.truncate(size - 100)  # the third record was half written
    rebooted = h.open_store(store.root, keyset)
    assert rebooted.recover() == ["seg-0000000001"]
    m = read_manifest(seg.with_suffix(".manifest"))
    assert m.recovered and len(m.chunk_digests) == 2 and m.frame_count == 10
    assert h.frame_numbers(frames_of(seg, keyset.agency)) == list(range(10))
    assert verify_path(store.root.root).ok
    (details,) = [e.details for e in read_entries(store.root.audit) if e.event == "power_recovery"]
    assert details["chunks_kept"] == 2 and details["bytes_dropped"] > 0
    assert rebooted.recover() == []  # idempotent
    h.record(rebooted, "rec-2", segments=1)  # and the chain carries on from the recovered segment
    assert read_manifest(store.root.evidence / "seg-0000000002.manifest").prev_digest == m.digest


def test_garbage_last_record_is_treated_as_torn(device, keyset, h) -> None:
    store = device("cam")
    seg = crash_mid_segment(store, h)
    data = bytearray(seg.read_bytes())
    data[-40] ^= 0xFF  # the last record's body no longer matches its own digest: a torn write
    seg.write_bytes(bytes(data))
    h.open_store(store.root, keyset).recover()
    assert h.frame_numbers(frames_of(seg, keyset.agency)) == list(range(10))


def test_unreadable_header_is_set_aside_not_deleted(device, keyset, h) -> None:
    store = device("cam")
    seg = crash_mid_segment(store, h, chunks=1)
    seg.write_bytes(seg.read_bytes()[:30])
    rebooted = h.open_store(store.root, keyset)
    assert rebooted.recover() == []
    assert (seg.parent / (seg.name + ".unsealed")).read_bytes() and not seg.exists()
    assert [i.name for i in rebooted.list_evidence() if not i.name.startswith("audit/")] == []
    h.record(rebooted, segments=1)  # its sequence number is reused: it never became evidence
    assert verify_path(store.root.root).ok


def test_manifest_written_but_head_not_saved_rolls_forward(device, keyset, h) -> None:
    store = device("cam")
    h.record(store, segments=2)
    save_head(store.root.state, ChainHead())  # the power went before the head was saved... twice
    rebooted = h.open_store(store.root, keyset)
    assert rebooted.recover() == []
    assert load_head(store.root.state) == ChainHead(2, read_manifest(store.root.evidence / "seg-0000000002.manifest").digest)


def test_fully_written_temp_manifest_is_promoted(device, keyset, h) -> None:
    store = device("cam")
    h.record(store, segments=1)
    manifest = store.root.evidence / "seg-0000000001.manifest"
    digest = read_manifest(manifest).digest
    manifest.rename(manifest.with_name(".seg-0000000001.manifest.tmp-1234"))  # cut before the rename
    save_head(store.root.state, ChainHead())
    rebooted = h.open_store(store.root, keyset)
    assert rebooted.recover() == []
    assert read_manifest(manifest).digest == digest and not read_manifest(manifest).recovered
    assert not list(store.root.evidence.glob(".*"))
    assert verify_path(store.root.root).ok
