"""Partial and damaged evidence: named and reported as such; one bad recording never blocks the others."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import av
import pytest

from export.exporter import export_evidence
from export.provenance import check_mp4
from firmware.cli import main
from hw_sim.camera import read_frame_number
from secure_store import keys
from secure_store.format import read_header


def frame_numbers(mp4: Path) -> list[int]:
    with av.open(str(mp4)) as container:
        return [read_frame_number(f.to_ndarray(format="gray")) for f in container.decode(container.streams.video[0])]


def chapter_titles(mp4: Path) -> list[str]:
    with av.open(str(mp4)) as container:
        return [c["metadata"]["title"] for c in container.chapters()]


def test_one_segment_of_a_recording_is_named_and_reported_partial(recorded, tmp_path: Path) -> None:
    device, pulled, _ = recorded
    segs = sorted(pulled.glob("seg-*.seg"))  # rec-1 is segments 1-4 (index 0-3), rec-2 is segment 5
    (rec,) = export_evidence(segs[1], device.agency_key, tmp_path).recordings
    assert rec.partial and rec.mp4.name == "CAM-0042_rec-1_partial_seq2-2.mp4"
    assert frame_numbers(rec.mp4) == list(range(10, 20))
    report = json.loads(rec.report.read_text())
    assert report["export"] == {"partial": True, "best_effort": False, "kind": "partial"}
    missing = report["missing"]
    assert [m["index"] for m in missing] == [0, 2, 3]
    manifests = {json.loads(json.dumps(s))["index"]: s for s in report["segments"]}
    assert 1 in manifests and all(m["from_utc"] and m["to_utc"] for m in missing)  # spans from their signed manifests
    assert missing[0]["from_utc"] < report["start_utc"] < report["end_utc"] < missing[1]["from_utc"]
    assert "not in this export" in missing[0]["reason"]
    html = rec.html.read_text()
    assert "PARTIAL" in html and "Verified, but partial" in html and missing[1]["from_utc"] in html


def test_a_damaged_recording_is_skipped_unless_best_effort(recorded, pki, tmp_path: Path, capsys) -> None:
    device, pulled, agency = recorded
    bad = tmp_path / "bad"
    shutil.copytree(pulled, bad)
    segs = sorted(bad.glob("seg-*.seg"))
    data = bytearray(segs[2].read_bytes())  # rec-1, index 2: frames 20-29
    data[-200] ^= 0x01
    segs[2].write_bytes(bytes(data))
    plain = export_evidence(bad, device.agency_key, tmp_path / "plain")
    assert [r.recording_id for r in plain.recordings] == ["rec-2"]  # the damaged one never blocks the others
    assert [s.recording_id for s in plain.skipped] == ["rec-1"] and "--best-effort" in plain.skipped[0].reason

    args = ["export", str(bad), "--agency-key", str(agency), "--out", str(tmp_path / "out"), "--best-effort",
            "--export-cert", str(pki.chain), "--export-key", str(pki.key), "--trust-root", str(pki.root_pem)]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert f"FAIL {segs[2].name}: chunk" in captured.err and "best effort" in captured.err
    assert "PARTIAL rec-1" in captured.out and f"missing: {segs[2].name} chunk 0" in captured.out
    out = tmp_path / "out"
    (rec1,) = out.glob("CAM-0042_rec-1_partial_*.mp4")
    assert frame_numbers(rec1) == [*range(0, 20), *range(30, 35)]  # what verified, nothing else
    assert any(t.startswith("GAP: ") for t in chapter_titles(rec1))
    report = json.loads(rec1.with_suffix(".json").read_text())
    assert report["export"]["best_effort"] and report["verification"]["ok"] is False
    assert [m["index"] for m in report["missing"]] == [2]
    assert report["missing"][0]["what"] == f"{segs[2].name} chunk 0"  # its only chunk: 1-s segments
    assert "does not match the signed manifest" in report["missing"][0]["reason"]
    assert report["missing"][0]["from_utc"] < report["missing"][0]["to_utc"]
    check = check_mp4(rec1, pki.root_pem.read_text())
    assert check.trusted and check.evidence["best_effort"] and check.evidence["partial"]
    assert [m["index"] for m in check.evidence["missing"]] == [2]
    assert check.evidence["verification_problems"]
    html = rec1.with_suffix(".html").read_text()
    assert "best-effort" in html and segs[2].name in html
    rec2 = out / "CAM-0042_rec-2.mp4"  # the undamaged recording is exported whole
    assert frame_numbers(rec2) == list(range(100, 112))


def test_an_empty_recording_is_skipped_and_the_others_exported(make_device, tmp_path: Path, capsys) -> None:
    """A power cut right after the press: a recovered segment with no chunks between two good recordings."""
    device = make_device(tmp_path / "device")
    device.record("rec-a", 0, 12)
    device.record("rec-b", 200, 15, power_cut=True, segment_s=3.0)
    torn = max(device.root.evidence.glob("seg-*.seg"))
    with open(torn, "rb") as f:
        header_len = len(read_header(f, torn.name)[1])
    os.truncate(torn, header_len + 10)  # the cut came while its first GOP was being written
    assert device.reboot() == [torn.stem]
    device.record("rec-c", 300, 12)
    pulled = device.offload(tmp_path / "pulled")
    agency = tmp_path / "agency.key"
    agency.write_bytes(keys.private_pem(device.agency_key))
    out = tmp_path / "out"
    args = ["export", str(pulled), "--agency-key", str(agency), "--out", str(out)]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "SKIPPED rec-b: no frames to export" in captured.err and "power-loss recovery" in captured.err
    assert frame_numbers(out / "CAM-0042_rec-a.mp4") == list(range(12))
    assert frame_numbers(out / "CAM-0042_rec-c.mp4") == list(range(300, 312))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # A rerun into the same folder exports nothing twice, overwrites nothing, and says why.
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "SKIPPED rec-a:" in err and "already exists" in err and "SKIPPED rec-c:" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_recording_sealed_to_another_agency_key_does_not_block_the_rest(make_device, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from secure_store.store import EvidenceStore

    device = make_device(tmp_path / "device")
    device.record("rec-a", 0, 12)
    other = X25519PrivateKey.generate()  # the agency rotated its key between the two recordings
    device.store = EvidenceStore(device.root, device_id="CAM-0042", signing_key=device.signing_key,
                                 agency_public_key=other.public_key(), audit=device.audit,
                                 clock=lambda: device.now, reserve_bytes=0)
    device.record("rec-b", 100, 12)
    pulled = device.offload(tmp_path / "pulled")
    result = export_evidence(pulled, device.agency_key, tmp_path / "out")
    assert [r.recording_id for r in result.recordings] == ["rec-a"]
    assert [(s.recording_id, "sealed to another agency key" in s.reason) for s in result.skipped] == [("rec-b", True)]
    assert frame_numbers(result.recordings[0].mp4) == list(range(12))
    with_other = export_evidence(pulled, other, tmp_path / "out-other")  # and the other key opens the other
    assert [r.recording_id for r in with_other.recordings] == ["rec-b"]


def test_best_effort_loses_only_the_damaged_chunk(make_device, tmp_path: Path) -> None:
    """One flipped bit in a 3-s segment costs the one GOP it is in, not the segment."""
    from secure_store.format import iter_records

    device = make_device(tmp_path / "device")
    device.record("rec-x", 0, 30, segment_s=3.0)  # one segment: GOPs 0-9, 10-19, 20-29
    pulled = device.offload(tmp_path / "pulled")
    (segment,) = pulled.glob("seg-*.seg")
    with open(segment, "rb") as f:
        header_len = len(read_header(f, segment.name)[1])
        chunk1 = [r for r in iter_records(f, header_len) if r.index == 1][0]
    data = bytearray(segment.read_bytes())
    data[chunk1.offset + 100] ^= 0x01
    segment.write_bytes(bytes(data))
    result = export_evidence(pulled, device.agency_key, tmp_path / "out", best_effort=True)
    (rec,) = result.recordings
    assert frame_numbers(rec.mp4) == [*range(0, 10), *range(20, 30)]
    report = json.loads(rec.report.read_text())
    (lost,) = report["missing"]
    assert lost["what"] == f"{segment.name} chunk 1" and "does not match the signed manifest" in lost["reason"]
    span = [dt.datetime.fromisoformat(lost[k]).timestamp() for k in ("from_utc", "to_utc")]
    assert span[1] - span[0] == pytest.approx(1.1, abs=1e-6)  # from frame 9 to frame 20: frames 10-19 lost
    assert lost["from_utc"] > report["start_utc"] and lost["to_utc"] < report["end_utc"]
    assert chapter_titles(rec.mp4) == ["start", "GAP: 1.0 s without video"]
    assert rec.partial and not result.ok
