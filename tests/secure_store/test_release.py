"""``EvidenceStore.release``, the only deletion path: what it deletes, what it logs, what it refuses.

Asserted by value: the audit entries' details, the bytes accounted, the refusal messages.
"""

from __future__ import annotations

import hashlib
import logging

import pytest

from secure_store.audit import read_entries
from secure_store.errors import ReleaseRefused


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
