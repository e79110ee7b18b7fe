"""Camera → dock → evidence store, end to end: real device store, real pty link, real SeaweedFS.

The dock confirms a segment to the camera (which then frees it) only once the store holds it
under COMPLIANCE retention with the checksum the dock verified; while the store is down the
camera keeps every segment, and the next pull after recovery confirms them.
"""

from __future__ import annotations

import dataclasses
import threading
from types import SimpleNamespace

from dock.bays import DockStation
from dock.client import pull
from dock.ingest import Ingestor
from firmware.cli import main
from hw_sim.link import LinkedPtys
from hw_sim.network import TcpRelay

DEVICE_ID = "CAM-0042"
PREFIX = f"v1/test-force/{DEVICE_ID}"


def _pull(device, keyset, archive, ingestor, **kw):
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        summary = pull(cable.b_path, archive, keyset.dock, store_holds=ingestor.segment_held, **kw)
        served.join()
    assert served.error is None
    return summary


def _stored(s3, bucket: str) -> dict[str, bytes]:
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=PREFIX + "/evidence/").get("Contents", [])
    return {o["Key"].rsplit("/", 1)[-1]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listing}


def test_camera_to_bucket_confirms_only_what_the_store_holds(device, keyset, store_config, s3, bucket, tmp_path):
    device.record(segments=3, recording_id="rec-a")
    before = device.evidence()
    archive = tmp_path / "archive"
    ingestor = Ingestor(store_config, archive)
    held_when_confirmed = []
    original = ingestor.segment_held

    def holds(device_dir, name):
        ok = original(device_dir, name)
        held_when_confirmed.append((name, ok and name in _stored(s3, bucket)))
        return ok
    ingestor.segment_held = holds
    summary = _pull(device, keyset, archive, ingestor)
    assert summary.ok, summary.problems
    segments = sorted(n for n in before if n.endswith(".seg"))
    assert summary.confirmed == segments
    assert held_when_confirmed == [(n, True) for n in segments]        # in the store before each confirm
    assert _stored(s3, bucket) == before                                # byte-identical, every file
    for name in before:
        retention = s3.get_object_retention(Bucket=bucket, Key=f"{PREFIX}/evidence/{name}")["Retention"]
        assert retention["Mode"] == "COMPLIANCE"
    assert device.evidence() == {}                                      # and only then freed


def test_store_outage_the_camera_keeps_its_copy_until_the_store_holds_it(device, keyset, seaweed, store_config,
                                                                         s3, bucket, tmp_path):
    device.record(segments=2)
    before = device.evidence()
    archive = tmp_path / "archive"
    with TcpRelay(("127.0.0.1", seaweed.s3_port)) as net:
        config = dataclasses.replace(store_config, endpoint=net.endpoint)
        net.cut()
        summary = _pull(device, keyset, archive, Ingestor(config, archive))
        assert summary.verified == sorted(n for n in before if n.endswith(".seg"))
        assert summary.confirmed == [] and summary.awaiting_store == summary.verified
        assert device.evidence() == before                              # nothing freed on the camera
        assert [e.event for e in device.events()].count("delete") == 0
        net.restore()
        restarted = Ingestor(config, archive)                           # the dock restarted meanwhile
        held, left = restarted.drain()
        assert left == 0 and held == 5
        summary = _pull(device, keyset, archive, restarted)             # the next pull confirms
    assert summary.confirmed == summary.verified and len(summary.confirmed) == 2
    assert device.evidence() == {}
    assert _stored(s3, bucket) == before


def test_confirm_after_local_confirms_at_once_and_ingests_from_the_queue(device, keyset, store_config, s3,
                                                                         bucket, tmp_path, dock_key_file):
    device.record(segments=2)
    before = device.evidence()
    archive = tmp_path / "archive"
    config = dataclasses.replace(store_config, confirm_after="local")
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        station = DockStation([cable.b_path], archive, keyset.dock, ingestor=Ingestor(config, archive),
                              confirm_after="local", max_sessions=1)
        assert station.run() == 0
        served.join()
    assert device.evidence() == {}
    assert _stored(s3, bucket) == before
    assert Ingestor(config, archive).pending() == []


def test_one_bays_fault_never_stalls_another(device, keyset, store_config, s3, bucket, tmp_path):
    device.record(segments=2)
    before = device.evidence()
    archive = tmp_path / "archive"
    reports: dict[str, list] = {}
    good_done = threading.Event()

    def report(port, result):
        reports.setdefault(port, []).append(result)
        good_done.set() if port == good.b_path else None
    with LinkedPtys() as good, LinkedPtys() as dead:                    # nobody answers on the dead bay
        served = device.serve(good.a_path)
        station = DockStation([dead.b_path, good.b_path], archive, keyset.dock,
                              ingestor=Ingestor(store_config, archive), max_sessions=1, handshake_timeout=120,
                              report=report)
        runner = threading.Thread(target=station.run)
        runner.start()
        assert good_done.wait(120)                                      # the good bay finished ...
        served.join(60)
        assert served.error is None and device.evidence() == {}
        assert dead.b_path not in reports                               # ... while the dead one still waits
        station.stop.set()
        dead.unplug()
        runner.join(60)
    assert _stored(s3, bucket) == before


def test_verify_status_and_hold_straight_from_the_store(device, keyset, seaweed, store_config, s3, bucket,
                                                        tmp_path, monkeypatch, capsys):
    device.record(segments=2, recording_id="rec-x")
    device.record(segments=1, recording_id="rec-y")
    archive = tmp_path / "archive"
    ingestor = Ingestor(store_config, archive)
    summary = _pull(device, keyset, archive, ingestor)
    ingestor.enqueue_device(archive / DEVICE_ID)
    assert ingestor.drain()[1] == 0 and len(summary.confirmed) == 3
    for name, value in {"AWS_ENDPOINT_URL": seaweed.endpoint, "AWS_ACCESS_KEY_ID": seaweed.access_key,
                        "AWS_SECRET_ACCESS_KEY": seaweed.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    url = f"s3://{bucket}/{PREFIX}"
    assert main(["verify", url]) == 0
    out = capsys.readouterr().out
    assert "OK: 3 segment(s) in 2 recording(s), 1 audit log(s), 0 problem(s)" in out

    assert main(["store", "hold", url, "--recording", "rec-x", "--case", "OP-2026/17"]) == 0
    for seq in (1, 2):
        key = f"{PREFIX}/evidence/seg-{seq:010d}.seg"
        assert s3.get_object_legal_hold(Bucket=bucket, Key=key)["LegalHold"]["Status"] == "ON"
    head = s3.head_object(Bucket=bucket, Key=f"{PREFIX}/evidence/seg-0000000003.seg")
    assert head.get("ObjectLockLegalHoldStatus", "OFF") == "OFF"             # the other recording: no hold
    capsys.readouterr()
    assert main(["store", "status", f"s3://{bucket}/v1/test-force", "--json"]) == 0
    import json
    status = json.loads(capsys.readouterr().out)
    (dev,) = status["devices"]
    assert dev["device"] == DEVICE_ID
    assert {r: (v["segments"], v["legal_hold"], v["mode"]) for r, v in dev["recordings"].items()} == {
        "rec-x": (2, True, "COMPLIANCE"), "rec-y": (1, False, "COMPLIANCE")}
    assert len(dev["holds"]) == 1

    # a segment altered on its way into another prefix fails verification, one line per problem
    bad = "v1/test-force/CAM-BAD"
    for o in s3.list_objects_v2(Bucket=bucket, Prefix=PREFIX + "/")["Contents"]:
        data = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        if o["Key"].endswith("seg-0000000002.seg"):
            data = data[:-40] + bytes(b ^ 1 for b in data[-40:])
        s3.put_object(Bucket=bucket, Key=bad + o["Key"][len(PREFIX):], Body=data)
    assert main(["verify", f"s3://{bucket}/{bad}"]) == 1
    out = capsys.readouterr().out
    assert "FAIL seg-0000000002.seg: chunk" in out and "FAILED" in out
    assert main(["verify", f"s3://{bucket}/v1/test-force/NOBODY"]) == 1
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    assert main(["verify", url]) == 1
    err = capsys.readouterr().err
    assert "SignatureDoesNotMatch" in err and "Traceback" not in err


def test_the_pull_hands_on_each_files_part_digests_as_fetched(device, keyset, store_config, s3, bucket, tmp_path):
    from dock.ingest_parts import PartDigest
    device.record(segments=2, recording_id="rec-p", frame_bytes=40_000)
    archive = tmp_path / "archive"
    ingestor = Ingestor(store_config, archive)
    handed: dict[str, list[str]] = {}

    def holds(device_dir, name, digests=None, parts=None):
        handed.update(parts or {})
        return ingestor.segment_held(device_dir, name, digests=digests, parts=parts)
    summary = _pull(device, keyset, archive, SimpleNamespace(segment_held=holds))
    assert summary.ok and len(summary.confirmed) == 2, summary.problems
    evidence = archive / DEVICE_ID / "evidence"
    assert sorted(handed) == sorted(p.name for p in evidence.iterdir())
    for name, parts in handed.items():                                  # the fetch's digests are of the bytes kept
        assert parts == PartDigest.of_file(evidence / name).parts()
