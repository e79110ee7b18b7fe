"""SegmentSealer + EvidenceStore: real files, fsync, AES-GCM, HPKE, Ed25519, and the real audit log."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from recorder.chunk import decode_chunk
from secure_store.audit import read_entries
from secure_store.errors import ReleaseRefused, SealerStateError, StorageFull, StoreError
from secure_store.format import HPKE_INFO, HPKE_SUITE, ZERO_DIGEST, read_header
from secure_store.verify import decrypt_chunks, read_manifest, verify_path


def decrypted_frames(path: Path, agency) -> list:
    return [f for chunk in decrypt_chunks(path, agency) for f in decode_chunk(chunk)]


def events(store) -> list:
    return [(e.event, e.details) for e in read_entries(store.root.audit)]


def test_round_trip_frames_manifest_and_chain(device, keyset, h) -> None:
    store = device()
    sealer = store.open_sealer()
    sealer.begin_segment("rec-1", 0)
    written = []
    for g in range(3):
        frames = h.gop(g * 5)
        written += frames
        sealer.write_chunk(frames)
        if g == 1:
            sealer.add_marker(7 * h.FRAME_US, "suspect ran")
    sealer.end_segment()
    h.record(store, "rec-1", segments=1, first_frame=15, first_index=1, sealer=sealer)

    report = verify_path(store.root.evidence)
    assert report.ok, report.problems
    seg1, seg2 = sorted(store.root.evidence.glob("*.seg"))
    got = decrypted_frames(seg1, keyset.agency)
    assert got == written  # bytes, keyframe flags and timestamps all survive
    assert h.frame_numbers(got + decrypted_frames(seg2, keyset.agency)) == list(range(30))

    m1, m2 = read_manifest(seg1.with_suffix(".manifest")), read_manifest(seg2.with_suffix(".manifest"))
    assert (m1.segment_seq, m1.index, m2.segment_seq, m2.index) == (1, 0, 2, 1)
    assert (m1.frame_count, m1.first_ts_us, m1.last_ts_us) == (15, 0, 14 * h.FRAME_US)
    assert len(m1.chunk_digests) == 4  # three GOPs and the final chunk
    assert [(m.timestamp_us, m.label) for m in m1.markers] == [(7 * h.FRAME_US, "suspect ran")]
    assert m1.prev_digest == ZERO_DIGEST and m2.prev_digest == m1.digest
    assert m1.first_utc_us == m1.first_ts_us + m1.utc_offset_us
    assert m1.utc_offset_us == 1_764_000_000_000_000 - 4 * h.FRAME_US  # clock read at the first GOP's end
    assert store.chain_head.seq == 2 and store.chain_head.digest == m2.digest
    sealed = [d for e, d in events(store) if e == "segment_sealed"]
    assert [d["manifest_sha256"] for d in sealed] == [m1.digest.hex(), m2.digest.hex()]


def test_pre_event_segment_gets_its_own_wall_clock_time_not_the_press_time(device, h) -> None:
    """Frames sealed 30 s after they were seen keep the UTC at which they were seen."""
    now_s = 1_764_000_000.0
    sensor_now_us = 30_000_000 + 4 * h.FRAME_US  # the sensor clock at the press: 30 s after frame 0
    store = device(sensor_clock=lambda: sensor_now_us, clock=lambda: now_s)
    h.record(store, segments=1, chunks=1)  # frames 0..4: the oldest of the pre-event
    (seg,) = store.root.evidence.glob("*.seg")
    m = read_manifest(seg.with_suffix(".manifest"))
    assert m.first_ts_us == 0
    assert m.first_utc_us == int(now_s * 1_000_000) - sensor_now_us  # seen 30 s before the press
    assert m.utc_offset_us == int(now_s * 1_000_000) - sensor_now_us


def test_no_footage_in_clear_on_disk(device, h) -> None:
    store = device()
    sealer = store.open_sealer()
    sealer.begin_segment("rec-1", 0)
    frames = h.gop(0, 3, 4000)
    sealer.write_chunk(frames)
    sealer.end_segment()
    blob = b"".join(p.read_bytes() for p in store.root.root.rglob("*") if p.is_file())
    for f in frames:
        assert f.data[8:40] not in blob


def test_key_directory_cannot_decrypt_a_segment(device, keyset, h) -> None:
    store = device()
    h.record(store, segments=1)
    header, _ = read_header(open(next(store.root.evidence.glob("*.seg")), "rb"))
    # The test's own agency key does unwrap it, so the attempt below is a real one.
    assert len(HPKE_SUITE.decrypt(header.wrapped_key, keyset.agency, info=HPKE_INFO)) == 32
    candidates = []
    for path in store.root.keys.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            continue
        raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
        candidates.append(x25519.X25519PrivateKey.from_private_bytes(raw))  # same 32 bytes as X25519
        if isinstance(key, x25519.X25519PrivateKey):
            candidates.append(key)
    assert [p.name for p in store.root.keys.rglob("*.key")] == ["device.key"] and candidates
    for candidate in candidates:
        with pytest.raises(Exception):
            HPKE_SUITE.decrypt(header.wrapped_key, candidate, info=HPKE_INFO)


def test_chain_survives_reboot_and_release(device, keyset, h) -> None:
    store = device("cam")
    h.record(store, segments=1)
    m1 = read_manifest(store.root.evidence / "seg-0000000001.manifest")
    store.release("seg-0000000001", m1.digest)
    rebooted = h.open_store(store.root, keyset)  # a new process: state comes from disk
    assert rebooted.chain_head.seq == 1
    h.record(rebooted, "rec-2", segments=1)
    m2 = read_manifest(store.root.evidence / "seg-0000000002.manifest")
    assert m2.segment_seq == 2 and m2.prev_digest == m1.digest
    assert [p.name for p in store.root.evidence.iterdir()] != [] and not (store.root.evidence / "seg-0000000001.seg").exists()
    assert verify_path(store.root.evidence).ok  # a gap before the first present segment is normal


def test_release_needs_the_manifest_digest(device, h) -> None:
    store = device()
    h.record(store, segments=2)
    manifest = store.root.evidence / "seg-0000000001.manifest"
    before = {p.name: p.read_bytes() for p in store.root.evidence.iterdir()}
    wrong = bytearray(hashlib.sha256(manifest.read_bytes()).digest())
    wrong[0] ^= 1
    for bad in (bytes(wrong), b"", "seg-0000000001", hashlib.sha256(b"x").digest()):
        with pytest.raises(ReleaseRefused):
            store.release("seg-0000000001", bad)
    with pytest.raises(ReleaseRefused):
        store.release("../keys/device", bytes(32))
    assert {p.name: p.read_bytes() for p in store.root.evidence.iterdir()} == before
    assert [e for e, _ in events(store)].count("release_refused") == 4

    store.release("seg-0000000001.seg", hashlib.sha256(manifest.read_bytes()).digest())
    assert sorted(p.name for p in store.root.evidence.iterdir()) == ["seg-0000000002.manifest", "seg-0000000002.seg"]
    (event, details), = [(e, d) for e, d in events(store) if e == "delete"]
    assert details["segment"] == "seg-0000000001" and details["manifest_sha256"] == hashlib.sha256(
        before["seg-0000000001.manifest"]).hexdigest()
    with pytest.raises(ReleaseRefused):
        store.release("seg-0000000001", hashlib.sha256(before["seg-0000000001.manifest"]).digest())


def test_storage_full_stops_cleanly_and_deletes_nothing(device, keyset, h) -> None:
    store = device(quota_bytes=700_000)
    h.record(store, "rec-0", segments=1, chunks=1, frames_per_chunk=2, )
    before = {p.name: p.read_bytes() for p in store.root.evidence.iterdir()}
    sealer = store.open_sealer()
    sealer.begin_segment("rec-1", 0)
    written = []
    with pytest.raises(StorageFull):
        for g in range(100):
            frames = h.gop(g * 5, 5, 10_000)
            sealer.write_chunk(frames)
            written += frames
    assert 3 <= len(written) // 5 < 100
    sealer.end_segment()  # harmless after the clean stop
    with pytest.raises(StorageFull):
        sealer.write_chunk(h.gop(0))
    with pytest.raises(StorageFull):
        store.open_sealer()
    assert all((store.root.evidence / n).read_bytes() == b for n, b in before.items())
    seg = store.root.evidence / "seg-0000000002.seg"
    assert read_manifest(seg.with_suffix(".manifest")).storage_full
    assert verify_path(store.root.evidence).ok
    assert decrypted_frames(seg, keyset.agency) == written
    full = [d for e, d in events(store) if e == "storage_full"]
    assert full[0]["segment"] == "seg-0000000002" and full[1]["during"] == "open_sealer"
    assert store.storage_status().level == "full"


def test_storage_status_levels(device) -> None:
    assert device().storage_status().level == "ok"
    store = device(quota_bytes=10 * 1024 * 1024)
    assert store.storage_status().level == "ok" and store.storage_status().free_bytes <= 10 * 1024 * 1024
    store.note_written(9_500_000)
    assert store.storage_status().level == "nearly_full"
    store.note_written(1_000_000)
    assert store.storage_status().level == "full" and store.storage_status().free_bytes == 0


def test_used_bytes_count_every_byte_sealed(device, keyset, h) -> None:
    """The quota is checked against the count: each segment's header counts too, as a reboot's scan finds."""
    store = device(quota_bytes=10 * 1024 * 1024)
    h.record(store, segments=2)
    on_disk = sum(p.stat().st_size for p in store.root.evidence.iterdir())
    status = store.storage_status()
    assert (status.used_bytes, status.free_bytes) == (on_disk, 10 * 1024 * 1024 - on_disk)
    assert h.open_store(store.root, keyset).storage_status().used_bytes == on_disk

def test_sealer_refuses_calls_out_of_order(device, h) -> None:
    sealer = device().open_sealer()
    with pytest.raises(SealerStateError):
        sealer.write_chunk(h.gop(0))
    with pytest.raises(SealerStateError):
        sealer.end_segment()
    with pytest.raises(SealerStateError):
        sealer.add_marker(0, "x")
    sealer.begin_segment("rec-1", 0)
    with pytest.raises(SealerStateError):
        sealer.begin_segment("rec-1", 1)


def test_list_evidence_only_sealed_files(device, h) -> None:
    store = device()
    h.record(store, segments=1)
    sealer = store.open_sealer()
    sealer.begin_segment("rec-2", 0)
    sealer.write_chunk(h.gop(0))  # open segment: on disk, not yet evidence
    items = store.list_evidence()
    names = [i.name for i in items]
    assert names[:2] == ["seg-0000000001.seg", "seg-0000000001.manifest"]
    assert "seg-0000000002.seg" not in names and any(n.startswith("audit/") for n in names)
    for item in items:
        data = store.evidence_path(item.name).read_bytes()
        assert (item.size, item.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    for bad in ("../identity.json", "audit/../../keys/device.key", ".hidden", "seg-9.seg"):
        with pytest.raises(StoreError):
            store.evidence_path(bad)


def test_list_evidence_offers_audit_only_up_to_its_last_whole_line(device, h) -> None:
    store = device()
    h.record(store, segments=1)
    (audit_item,) = [i for i in store.list_evidence() if i.kind == "audit"]
    path = store.evidence_path(audit_item.name)
    whole = path.read_bytes()
    with open(path, "ab") as f:  # an append caught half-way, as a dock may see it
        f.write(b'{"half an entry')
    (listed,) = [i for i in store.list_evidence() if i.kind == "audit"]
    assert (listed.size, listed.sha256) == (len(whole), hashlib.sha256(whole).hexdigest())


def test_list_evidence_hashes_a_sealed_file_once(device, h, monkeypatch) -> None:
    store = device()
    h.record(store, segments=2)
    first = store.list_evidence()
    import secure_store.store as store_module
    monkeypatch.setattr(store_module, "_sha256_prefix", lambda *a: pytest.fail("re-hashed a sealed file"))
    assert store.list_evidence() == first


def test_bad_input_is_refused_at_once_and_loses_nothing(device, keyset, h) -> None:
    from secure_store.errors import FormatError
    from buffer.frame import Frame

    store = device()
    sealer = store.open_sealer()
    for bad in ("", "has space", "x" * 65, "naïve"):
        with pytest.raises(FormatError):
            sealer.begin_segment(bad, 0)
    sealer.begin_segment("rec-1", 0)
    sealer.write_chunk(h.gop(0))
    with pytest.raises(FormatError):
        sealer.add_marker(10, "x" * 300)
    with pytest.raises(FormatError):
        sealer.add_marker(10, "bell\x07")
    with pytest.raises(FormatError):
        sealer.write_chunk([Frame(b"x", True, -1)])
    sealer.add_marker(10, "fine")
    sealer.end_segment()
    sealer.begin_segment("rec-2", 0)  # a segment with no chunks still seals and verifies
    sealer.end_segment()
    report = verify_path(store.root.evidence)
    assert report.ok and [s.manifest.frame_count for s in report.segments] == [5, 0]
    assert [m.label for m in report.segments[0].manifest.markers] == ["fine"]
    assert h.frame_numbers(decrypted_frames(store.root.evidence / "seg-0000000001.seg", keyset.agency)) == [0, 1, 2, 3, 4]


DISK_LIMIT_CHILD = r"""
import resource, signal, sys
from buffer.frame import Frame
from secure_store import keys
from secure_store.audit import AuditLog
from secure_store.errors import StorageFull
from secure_store.layout import DeviceRoot
from secure_store.store import EvidenceStore

root = DeviceRoot(sys.argv[1])
key = keys.load_private_key(root.device_key, "device")
store = EvidenceStore(root, device_id="CAM-0001", signing_key=key,
                      agency_public_key=keys.load_public_key(root.agency_pub, "agency"),
                      audit=AuditLog(root.audit, key, "CAM-0001"), reserve_bytes=0)
sealer = store.open_sealer()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))  # the kernel refuses to grow a file past this
sealer.begin_segment("rec-1", 0)
n = 0
try:
    while True:
        sealer.write_chunk([Frame(b"\0\0\0\1" + (n + i).to_bytes(4, "big") + bytes(2000), i == 0, (n + i) * 33333)
                            for i in range(5)])
        n += 5
except StorageFull as exc:
    print(n, exc)
"""


def test_disk_refusing_writes_mid_chunk_stops_cleanly(tmp_path, keyset, h) -> None:
    import subprocess
    import sys

    root = h.provision_root(tmp_path / "device", keyset)
    out = subprocess.run([sys.executable, "-c", DISK_LIMIT_CHILD, str(root.root)], capture_output=True, text=True,
                         env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])}, timeout=60)
    assert out.returncode == 0, out.stderr
    acked, message = out.stdout.split(" ", 1)
    assert int(acked) >= 20 and "storage full while writing a chunk" in message
    seg = root.evidence / "seg-0000000001.seg"
    assert seg.stat().st_size <= 60_000 and read_manifest(seg.with_suffix(".manifest")).storage_full
    assert verify_path(root.root).ok
    assert h.frame_numbers(decrypted_frames(seg, keyset.agency)) == list(range(int(acked)))


def test_chain_and_verification_across_re_provisioning(tmp_path, keyset, h) -> None:
    from firmware.provision import load_identity, provision
    from secure_store import keys as keyfiles
    from secure_store.audit import AuditLog
    from secure_store.layout import DeviceRoot
    from secure_store.store import EvidenceStore

    keyfiles.write_keypair("vendor", tmp_path / "vendor")
    (tmp_path / "agency.pub").write_bytes(keyfiles.public_pem(keyset.agency.public_key()))
    root = DeviceRoot(tmp_path / "device")

    def boot_and_record(rec: str) -> None:
        key = keyfiles.load_private_key(root.device_key, "device")
        device_id = load_identity(root)["device_id"]
        store = EvidenceStore(root, device_id=device_id, signing_key=key, audit=AuditLog(root.audit, key, device_id),
                              agency_public_key=keyfiles.load_public_key(root.agency_pub, "agency"), reserve_bytes=0)
        store.recover()
        h.record(store, rec, segments=2)

    provision(root, "CAM-0001", tmp_path / "agency.pub", tmp_path / "vendor.pub")
    boot_and_record("before")
    provision(root, "CAM-0001", tmp_path / "agency.pub", tmp_path / "vendor.pub", force=True)
    boot_and_record("after")
    report = verify_path(root.root)
    assert report.ok, [str(p) for p in report.problems]
    m = {s.manifest.segment_seq: s.manifest for s in report.segments}
    assert sorted(m) == [1, 2, 3, 4] and m[3].prev_digest == m[2].digest  # one chain across the key change
    assert m[2].device_key_fp != m[3].device_key_fp
    current = keyfiles.load_public_key(root.device_pub, "device")
    only_new = verify_path(root.evidence, current)
    reasons = [p.reason.split(":")[0] for p in only_new.problems]
    assert reasons[:2] == ["signed by another key"] * 2 and "audit log" in reasons  # the log's first entries too
