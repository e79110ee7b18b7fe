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


# -- each part's SHA-256 handed on too (the fetch takes them in the same pass): ingest hashes nothing


@pytest.fixture
def big_parts_config(store_config):
    from dataclasses import replace
    from dock.ingest_parts import PART_SIZE
    return replace(store_config, part_size=PART_SIZE, multipart_threshold=PART_SIZE)


def _fetched(d) -> tuple[dict[str, str], dict[str, list[str]]]:
    """What the pull's fetch hands on: each file fed to a PartDigest in uneven pieces, as frames come."""
    from dock.ingest_parts import PartDigest
    digests, parts = {}, {}
    for name in (SEG, MANIFEST):
        data, digest, at = (d / "evidence" / name).read_bytes(), PartDigest(), 0
        while at < len(data):
            digest.update(data[at:at + 65_519])
            at += 65_519
        digests[name], parts[name] = digest.hexdigest(), digest.parts()
    return digests, parts


def test_part_digest_matches_hashing_each_part_and_resumes_from_a_file(tmp_path):
    from dock.ingest_parts import PART_SIZE, PartDigest, b64
    data = os.urandom(2 * PART_SIZE + 12_345)
    (tmp_path / "f").write_bytes(data[:PART_SIZE + 7])                  # an interrupted fetch's .part file
    digest = PartDigest.of_file(tmp_path / "f")
    digest.update(data[PART_SIZE + 7:])
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest() and digest.size == len(data)
    assert digest.parts() == [b64(hashlib.sha256(data[i:i + PART_SIZE]).digest()) for i in (0, PART_SIZE, 2 * PART_SIZE)]


def test_handed_on_part_digests_are_what_the_store_holds(big_parts_config, s3, bucket, device_dir):
    from dock.ingest_parts import composite
    digests, parts = _fetched(device_dir)
    assert len(parts[SEG]) == 2
    ingestor = Ingestor(big_parts_config, device_dir.parent)
    assert ingestor.segment_held(device_dir, SEG, digests=digests, parts=parts)
    body = s3.get_object(Bucket=bucket, Key=_key(SEG))["Body"].read()
    assert hashlib.sha256(body).hexdigest() == digests[SEG]
    head = s3.head_object(Bucket=bucket, Key=_key(SEG), ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == composite(parts[SEG]) and head["ObjectLockMode"] == "COMPLIANCE"
    assert ingestor.pending() == []


def test_a_part_digest_that_does_not_match_the_bytes_is_never_completed(big_parts_config, s3, bucket, device_dir,
                                                                        caplog):
    from dock.ingest_parts import b64
    digests, parts = _fetched(device_dir)
    parts[SEG][1] = b64(hashlib.sha256(b"other bytes").digest())        # a wrong part digest, the whole one right
    ingestor = Ingestor(big_parts_config, device_dir.parent)
    with caplog.at_level(logging.ERROR, logger="dock.ingest"):
        assert not ingestor.segment_held(device_dir, SEG, digests=digests, parts=parts)
    assert "changed on the dock's disk since it was verified" in caplog.text
    assert s3.list_objects_v2(Bucket=bucket, Prefix=_key(SEG)).get("Contents", []) == []
    assert any(u.path.endswith(SEG) for u in ingestor.pending())         # not confirmed: still queued


def test_a_file_changed_since_its_fetch_is_refused_part_by_part(big_parts_config, s3, bucket, device_dir):
    digests, parts = _fetched(device_dir)
    path = device_dir / "evidence" / SEG
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x80                                                     # the last part changes on the dock's disk
    path.write_bytes(bytes(data))
    ingestor = Ingestor(big_parts_config, device_dir.parent)
    assert not ingestor.segment_held(device_dir, SEG, digests=digests, parts=parts)
    assert s3.list_objects_v2(Bucket=bucket, Prefix=_key(SEG)).get("Contents", []) == []
