"""``EvidenceStore.release``, the only deletion path: what it deletes, what it logs, what it refuses.

Asserted by value: the audit entries' details, the bytes accounted, the refusal messages.
"""

from __future__ import annotations

import errno
import hashlib
import logging
from pathlib import Path

import pytest

from secure_store.audit import AuditLog, read_entries
from secure_store.chain import load_head
from secure_store.errors import ReleaseRefused, StorageFull
from secure_store.reserve import RESERVE_FILE, ReservedAudit, SealingReserve
from secure_store.store import EvidenceStore

QUOTA = 8 * 1024 * 1024


def _digest(store, stem: str) -> bytes:
    return hashlib.sha256((store.root.evidence / f"{stem}.manifest").read_bytes()).digest()


def _sizes(store, stem: str) -> int:
    return sum((store.root.evidence / f"{stem}{s}").stat().st_size for s in (".seg", ".manifest"))


@pytest.mark.parametrize("name", ["seg-0000000001", "seg-0000000001.seg", "seg-0000000001.manifest"])
def test_release_by_any_of_its_names_deletes_both_files_and_logs_the_bytes(device, h, caplog, name):
    store = device()
    h.record(store, segments=2)
    size, digest = _sizes(store, "seg-0000000001"), _digest(store, "seg-0000000001")
    used = store.storage_status().used_bytes
    with caplog.at_level(logging.INFO, logger="secure_store.store"):
        store.release(name, digest)
    assert sorted(p.name for p in store.root.evidence.iterdir()) == ["seg-0000000002.manifest", "seg-0000000002.seg"]
    assert store.storage_status().used_bytes == used - size
    delete = [e for e in read_entries(store.root.audit) if e.event == "delete"]
    assert [e.details for e in delete] == [{"segment": "seg-0000000001", "manifest_sha256": digest.hex(),
                                            "bytes": size}]
    assert f"released seg-0000000001 ({size} bytes)" in caplog.text
    store.release("seg-0000000002", _digest(store, "seg-0000000002"))
    assert store.storage_status().used_bytes == 0 and list(store.root.evidence.iterdir()) == []


def test_release_of_a_manifest_whose_segment_is_already_gone(device, h):
    store = device()
    h.record(store, segments=1)
    manifest_size = (store.root.evidence / "seg-0000000001.manifest").stat().st_size
    (store.root.evidence / "seg-0000000001.seg").unlink()
    store.release("seg-0000000001", _digest(store, "seg-0000000001"))
    assert list(store.root.evidence.iterdir()) == []
    assert [e.details["bytes"] for e in read_entries(store.root.audit) if e.event == "delete"] == [manifest_size]


def test_refusals_say_why_and_log_the_wrong_confirmation(device, h):
    store = device()
    h.record(store, segments=1)
    before = sorted(p.name for p in store.root.evidence.iterdir())
    with pytest.raises(ReleaseRefused, match=r"^release: '\.\./keys/device' is not a segment name$"):
        store.release("../keys/device", bytes(32))
    with pytest.raises(ReleaseRefused, match=r"^release: seg-0000000009 is not a sealed segment on this device$"):
        store.release("seg-0000000009", bytes(32))
    with pytest.raises(ReleaseRefused, match=r"confirmation does not match the manifest of seg-0000000001"):
        store.release("seg-0000000001", bytes(32))
    assert sorted(p.name for p in store.root.evidence.iterdir()) == before
    refused = [e.details for e in read_entries(store.root.audit) if e.event == "release_refused"]
    assert refused == [{"segment": "seg-0000000001", "reason": "confirmation does not match manifest"}]


def fill(directory: Path, name: str = "other-writer.bin") -> Path:
    """Another writer takes every free block of ``directory``'s file system."""
    path = directory / name
    with open(path, "ab", buffering=0) as f:
        for block in (1 << 16, 4096, 512):
            try:
                while True:
                    f.write(b"\xa5" * block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return path


@pytest.fixture
def full_state(make_tmpfs, tmp_path, keyset, h):
    """A store whose ``state/`` (the chain head) is a small file system of its own, and its filler;
    evidence, the audit log and the sealing reserve are on the roomy disk."""
    root = h.provision_root(tmp_path / "dev", keyset)
    state = make_tmpfs(1)
    root.state.symlink_to(state, target_is_directory=True)
    store = h.open_store(root, keyset, quota_bytes=QUOTA,
                         sealing_reserve=SealingReserve(tmp_path / "reserve" / RESERVE_FILE))
    return store, state


def test_release_while_the_chain_head_finds_no_room_keeps_the_manifest_until_it_does(full_state, h, caplog):
    store, state = full_state
    filler = fill(state)
    h.record(store, segments=1)
    assert store.head_dirty and load_head(store.root.state).seq == 0  # sealed; its chain head waits for room
    stem = "seg-0000000001"
    seg_size = (store.root.evidence / f"{stem}.seg").stat().st_size
    manifest_size = (store.root.evidence / f"{stem}.manifest").stat().st_size
    digest = _digest(store, stem)
    assert store.storage_status().used_bytes == seg_size + manifest_size

    with caplog.at_level(logging.WARNING, logger="secure_store.store"):
        store.release(stem, digest)
    assert [p.name for p in store.root.evidence.iterdir()] == [f"{stem}.manifest"]
    status = store.storage_status()
    assert (status.used_bytes, status.free_bytes, status.level) == (manifest_size, QUOTA - manifest_size, "full")
    assert store.head_dirty and load_head(store.root.state).seq == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(stem in m and "manifest stays until the chain head is saved" in m for m in warned), warned

    filler.unlink()  # the other writer gives its blocks back: the chain head is saved, then the manifest goes
    store.release(stem, digest)
    assert list(store.root.evidence.iterdir()) == [] and store.storage_status().used_bytes == 0
    assert not store.head_dirty and load_head(store.root.state).seq == 1
    delete = [e.details for e in read_entries(store.root.audit) if e.event == "delete"]
    assert [(d["segment"], d["manifest_sha256"]) for d in delete] == [(stem, digest.hex())] * 2


def test_release_with_its_chain_head_saved_needs_no_room_for_it(full_state, h):
    store, state = full_state
    h.record(store, segments=1)
    fill(state)
    store.release("seg-0000000001", _digest(store, "seg-0000000001"))
    assert list(store.root.evidence.iterdir()) == [] and store.storage_status().used_bytes == 0
    assert not store.head_dirty and not store.recovery_pending and load_head(store.root.state).seq == 1


def test_release_on_a_full_disk_writes_the_delete_entry_it_kept_in_memory(make_tmpfs, keyset, h):
    root = h.provision_root(make_tmpfs(4) / "dev", keyset)
    reserve = SealingReserve(root.state / RESERVE_FILE)
    audit = ReservedAudit(AuditLog(root.audit, keyset.device, h.DEVICE_ID), reserve)
    store = EvidenceStore(root, device_id=h.DEVICE_ID, signing_key=keyset.device,
                          agency_public_key=keyset.agency.public_key(), audit=audit, reserve_bytes=0,
                          clock=lambda: 1_764_000_000.0, sealing_reserve=reserve)
    h.record(store, segments=1)
    fill(root.root)
    reserve.release()  # spent on an earlier seal; the other writer took its blocks too
    fill(root.root, "other-writer-2.bin")
    refusals = 0
    while not audit.pending and refusals < 50:  # record pressed on a full disk, until the log's last block is full
        with pytest.raises(StorageFull):
            store.open_sealer()
        refusals += 1
    assert audit.pending == 1
    digest = _digest(store, "seg-0000000001")
    store.release("seg-0000000001", digest)
    assert list(store.root.evidence.iterdir()) == [] and audit.pending == 0
    entries = read_entries(root.audit)
    assert [e.event for e in entries].count("storage_full") == refusals
    assert [(e.details["segment"], e.details["manifest_sha256"], e.details["deferred"])
            for e in entries if e.event == "delete"] == [("seg-0000000001", digest.hex(), True)]
