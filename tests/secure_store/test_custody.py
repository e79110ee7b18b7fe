"""What a dock must still fetch after a pull so that its store satisfies rule A5."""

from __future__ import annotations

import hashlib
import shutil

from secure_store.custody import sealed_but_absent
from secure_store.verify import verify_path


def test_segment_sealed_during_a_pull_is_named_for_fetching(tmp_path, keyset, h) -> None:
    root = h.provision_root(tmp_path / "device", keyset)
    store = h.open_store(root, keyset)
    h.record(store, segments=3)
    store.release("seg-0000000001.seg", hashlib.sha256((root.evidence / "seg-0000000001.manifest").read_bytes()).digest())
    dock = tmp_path / "dock" / "CAM-0001"
    shutil.copytree(root.root, dock, ignore=shutil.ignore_patterns("keys"))
    assert sealed_but_absent(dock) == []
    for suffix in (".seg", ".manifest"):  # as if seg 3 was sealed after the dock's listing
        (dock / "evidence" / f"seg-0000000003{suffix}").unlink()
    assert sealed_but_absent(dock) == ["seg-0000000003.seg", "seg-0000000003.manifest"]
    assert not verify_path(dock).ok  # A5, until the dock fetches it
    for name in sealed_but_absent(dock):
        shutil.copy(root.evidence / name, dock / "evidence" / name)
    assert verify_path(dock).ok
