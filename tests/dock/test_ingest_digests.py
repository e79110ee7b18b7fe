"""The pull hands ingest the SHA-256 it took as each file arrived, so ingest does not read the file
once more to hash it; the bytes that reach the store are still checked against that digest (the
server checks a single PUT, the dock checks a multipart upload before completing it)."""

from __future__ import annotations

import hashlib
import logging
import os

import pytest

from dock.ingest import Ingestor
from secure_store.durable import write_atomic

SEG, MANIFEST = "seg-0000000001.seg", "seg-0000000001.manifest"


@pytest.fixture
def device_dir(tmp_path):
    d = tmp_path / "archive" / "CAM-0042"
    (d / "evidence").mkdir(parents=True)
    write_atomic(d / "identity.json", b'{"device_id": "CAM-0042"}\n')
    write_atomic(d / "evidence" / SEG, os.urandom(13 * 2**20))          # three parts of 5 MiB at most
    write_atomic(d / "evidence" / MANIFEST, os.urandom(3000))
    return d


def _digests(d) -> dict[str, str]:
    return {n: hashlib.sha256((d / "evidence" / n).read_bytes()).hexdigest() for n in (SEG, MANIFEST)}


def _key(name: str) -> str:
    return f"v1/test-force/CAM-0042/evidence/{name}"


def test_handed_on_digests_are_what_the_store_holds(store_config, s3, bucket, device_dir):
    ingestor = Ingestor(store_config, device_dir.parent)
    assert ingestor.segment_held(device_dir, SEG, digests=_digests(device_dir))
    for name in (SEG, MANIFEST):
        body = s3.get_object(Bucket=bucket, Key=_key(name))["Body"].read()
        assert body == (device_dir / "evidence" / name).read_bytes()
        head = s3.head_object(Bucket=bucket, Key=_key(name), ChecksumMode="ENABLED")
        assert head["ObjectLockMode"] == "COMPLIANCE" and head.get("ChecksumSHA256")
    assert ingestor.pending() == []                                     # the queue is empty once held


@pytest.mark.parametrize("altered", [SEG, MANIFEST])
def test_a_file_changed_on_the_dock_since_its_fetch_is_never_stored_nor_held(store_config, s3, bucket, device_dir,
                                                                           altered, caplog):
    digests = _digests(device_dir)                                       # as the fetch took them
    path = device_dir / "evidence" / altered
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01                                         # the dock's disk flips one bit
    path.write_bytes(bytes(data))
    ingestor = Ingestor(store_config, device_dir.parent)
    with caplog.at_level(logging.ERROR, logger="dock.ingest"):
        assert not ingestor.segment_held(device_dir, SEG, digests=digests)
    assert "changed on the dock's disk since it was verified" in caplog.text
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=_key(altered)).get("Contents", [])
    assert listing == []                                                 # the store never took other bytes
    assert any(u.path.endswith(altered) for u in ingestor.pending())     # still queued, for an operator
