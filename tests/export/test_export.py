"""Export: real H.264 from the sim camera, sealed by the real store, exported to MP4 and read back."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings, strategies as st

from buffer.frame import Frame
from buffer.prebuffer import PreEventBuffer

from export.errors import ExportError, ExportRefused
from export.exporter import export_evidence
from export.mp4 import Mp4Remuxer
from firmware.cli import main
from hw_sim.camera import SimCamera, read_frame_number
from recorder.encoders import PyAVEncoder
from recorder.segmenter import Segmenter
from secure_store import keys

WIDTH, HEIGHT, FPS = 256, 144, 10  # as conftest.Device records
UTC0 = 1_760_000_000.0  # the device clock at frame timestamp 0


def mp4_frame_numbers(path: Path) -> tuple[list[int], list[float], float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        duration = float(stream.duration * stream.time_base)
        return ([read_frame_number(f.to_ndarray(format="gray")) for f in frames],
                [float(f.pts * f.time_base) for f in frames], duration)


def test_export_round_trip(recorded, tmp_path: Path) -> None:
    device, pulled, _ = recorded
    out = tmp_path / "out"
    result = export_evidence(pulled, device.agency_key, out)
    assert [r.recording_id for r in result.recordings] == ["rec-1", "rec-2"]
    rec1, rec2 = result.recordings

    numbers, times, duration = mp4_frame_numbers(rec1.mp4)
    assert numbers == list(range(35))  # every frame, in order, none duplicated
    assert times == pytest.approx([n / FPS for n in range(35)], abs=1e-6)
    assert duration == pytest.approx(3.5, abs=1e-3)
    assert mp4_frame_numbers(rec2.mp4)[0] == list(range(100, 112))

    report = json.loads(rec1.report.read_text())
    assert report["format"] == "bodycam-export-report" and report["verification"]["ok"] is True
    assert report["mp4"]["sha256"] == hashlib.sha256(rec1.mp4.read_bytes()).hexdigest() == rec1.mp4_sha256
    assert report["mp4"]["reencoded"] is False and report["mp4"]["frames"] == report["frame_count"] == 35
    assert (report["mp4"]["width"], report["mp4"]["height"]) == (WIDTH, HEIGHT)
    segs = sorted(p.name for p in pulled.glob("seg-*.seg"))
    rec1_segs = [s["file"] for s in report["segments"]]
    assert len(rec1_segs) >= 3 and rec1_segs == segs[:len(rec1_segs)]
    for item in report["inputs"]:
        assert item["sha256"] == hashlib.sha256((pulled / item["file"]).read_bytes()).hexdigest()
    assert {i["file"] for i in report["inputs"]} == {n for s in rec1_segs for n in (s, s[:-4] + ".manifest")}
    assert [(m["label"], m["offset_s"]) for m in report["markers"]] == [("door opened", 0.4), ("arrest", 2.2)]
    # The sealer takes the UTC offset when a GOP is written, one frame after its last frame was seen.
    start = dt.datetime.fromisoformat(report["start_utc"]).timestamp()
    end = dt.datetime.fromisoformat(report["end_utc"]).timestamp()
    assert UTC0 <= start <= UTC0 + 0.2 and end - start == pytest.approx(3.4, abs=0.2)
    offset_us = report["segments"][0]["utc_offset_us"]
    assert offset_us in report["clock"]["utc_offset_us"]
    assert report["start_utc"] == dt.datetime.fromtimestamp((0 + offset_us) / 1e6, dt.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")
    assert report["gaps"] == [] and report["recovered_segments"] == []
    assert len(report["clock"]["utc_offset_us"]) >= 1
    audit = report["audit"]
    assert len(audit["logs"]) == 1 and audit["logs"][0]["head_seq"] >= 7
    events = [(e["event"], e["details"].get("recording") or e["details"].get("segment")) for e in audit["entries"]]
    assert audit["entries"][0]["event"] == "clock_sync" and audit["entries"][0]["details"]["step_us"] == 350
    assert events[1] == ("record_start", "rec-1") and events[-1] == ("record_stop", "rec-1")
    assert [name for event, name in events if event == "segment_sealed"] == [s[:-4] for s in rec1_segs]
    with av.open(str(rec1.mp4)) as container:
        assert "rec-1" in container.metadata.get("comment", "")


def test_export_with_given_device_key(recorded, tmp_path: Path) -> None:
    device, pulled, _ = recorded
    result = export_evidence(pulled, device.agency_key, tmp_path, device.signing_key.public_key())
    assert [r.frame_count for r in result.recordings] == [35, 12]


def test_cli_export_and_refusals(recorded, tmp_path: Path, capsys) -> None:
    device, pulled, agency = recorded
    out = tmp_path / "out"
    assert main(["export", str(pulled), "--agency-key", str(agency), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rec-1" in printed and "35 frames" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "CAM-0042_rec-1.html", "CAM-0042_rec-1.json", "CAM-0042_rec-1.mp4",
        "CAM-0042_rec-2.html", "CAM-0042_rec-2.json", "CAM-0042_rec-2.mp4"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # a second export never overwrites the first
    assert main(["export", str(pulled), "--agency-key", str(agency), "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # wrong agency key: decryption refused, nothing written
    other = tmp_path / "other.key"
    other.write_bytes(keys.private_pem(X25519PrivateKey.generate()))
    assert main(["export", str(pulled), "--agency-key", str(other), "--out", str(tmp_path / "o2")]) == 1
    assert "sealed to another agency key" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()
    # bad usage
    with pytest.raises(SystemExit) as exc:
        main(["export", str(pulled)])
    assert exc.value.code == 2
    assert main(["export", str(tmp_path / "nowhere"), "--agency-key", str(agency), "--out", str(out)]) == 2
    assert main(["export", str(pulled), "--agency-key", str(tmp_path / "missing.key"), "--out", str(out)]) == 1
    assert "not found" in capsys.readouterr().err


def test_export_one_segment(recorded, tmp_path: Path) -> None:
    device, pulled, _ = recorded
    second = sorted(pulled.glob("seg-*.seg"))[1]  # rec-1, index 1: starts at a keyframe, decodes alone
    (rec,) = export_evidence(second, device.agency_key, tmp_path).recordings
    assert mp4_frame_numbers(rec.mp4)[0] == list(range(10, 20))
    report = json.loads(rec.report.read_text())
    assert [s["index"] for s in report["segments"]] == [1] and report["frame_count"] == 10


def test_cli_notes_an_unchecked_audit_log(recorded, tmp_path: Path, capsys) -> None:
    _, pulled, agency = recorded
    segment = sorted(pulled.glob("seg-*.seg"))[0]
    assert main(["export", str(segment), "--agency-key", str(agency), "--out", str(tmp_path)]) == 0
    assert "no audit log" in capsys.readouterr().err


def tamper_copy(pulled: Path, dest: Path) -> Path:
    shutil.copytree(pulled, dest)
    return dest


@pytest.mark.parametrize("tamper", ["segment_deleted", "audit_altered", "wrong_device_key"])
def test_tampered_evidence_is_not_exported(recorded, tmp_path: Path, capsys, tamper: str) -> None:
    """Problems that could concern any recording (a segment the audit log misses, the log itself, the key)."""
    device, pulled, agency = recorded
    bad = tamper_copy(pulled, tmp_path / "bad")
    segs = sorted(bad.glob("seg-*.seg"))
    args = ["export", str(bad), "--agency-key", str(agency), "--out", str(tmp_path / "out")]
    if tamper == "segment_deleted":
        segs[1].unlink()
        segs[1].with_suffix(".manifest").unlink()
        expect = "missing"
    elif tamper == "audit_altered":
        (log,) = (bad / "audit").glob("audit-*.log")
        log.write_bytes(log.read_bytes().replace(b'"recording":"rec-2"', b'"recording":"rec-9"'))
        expect = "audit log: entry"
    else:
        stranger = tmp_path / "stranger.pub"
        stranger.write_bytes(keys.public_pem(Ed25519PrivateKey.generate().public_key()))
        args += ["--device-pub", str(stranger)]
        expect = "signed by another key"
    assert main(args) == 1
    err = capsys.readouterr().err
    assert expect in err and "verification failed" in err and "nothing exported" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_tampered_recording_is_skipped_and_the_others_exported(recorded, tmp_path: Path, capsys) -> None:
    device, pulled, agency = recorded
    bad = tamper_copy(pulled, tmp_path / "bad")
    segs = sorted(bad.glob("seg-*.seg"))
    data = bytearray(segs[1].read_bytes())  # rec-1
    data[-200] ^= 0x01
    segs[1].write_bytes(bytes(data))
    assert main(["export", str(bad), "--agency-key", str(agency), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"FAIL {segs[1].name}: chunk" in err and "SKIPPED rec-1: does not verify" in err and "--best-effort" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "CAM-0042_rec-2.html", "CAM-0042_rec-2.json", "CAM-0042_rec-2.mp4"]
    assert mp4_frame_numbers(tmp_path / "out" / "CAM-0042_rec-2.mp4")[0] == list(range(100, 112))
    report = json.loads((tmp_path / "out" / "CAM-0042_rec-2.json").read_text())
    assert report["verification"]["ok"] is True and report["verification"]["problems"] == []
    assert [p.split(":")[0] for p in report["verification"]["other_problems"]] == [segs[1].name]


def test_library_refusal_names_each_problem(recorded, tmp_path: Path) -> None:
    device, pulled, _ = recorded
    bad = tamper_copy(pulled, tmp_path / "bad")
    segs = sorted(bad.glob("seg-*.seg"))
    segs[0].write_bytes(segs[0].read_bytes()[:-100])  # truncated: rec-1 is skipped, rec-2 exported
    result = export_evidence(bad, device.agency_key, tmp_path / "out")
    assert [r.recording_id for r in result.recordings] == ["rec-2"]
    (skipped,) = result.skipped
    assert skipped.recording_id == "rec-1" and "truncated" in skipped.reason
    segs[-1].with_suffix(".manifest").unlink()  # and now a segment with no manifest: could be anyone's
    with pytest.raises(ExportRefused) as exc:
        export_evidence(bad, device.agency_key, tmp_path / "out2")
    assert any(p.startswith(segs[0].name) and "truncated" in p for p in exc.value.problems)
    assert any(p.startswith(segs[-1].name) and "no manifest" in p for p in exc.value.problems)
    assert not (tmp_path / "out2").exists()
    with pytest.raises(ExportError, match="no sealed segments"):
        (tmp_path / "empty").mkdir()
        export_evidence(tmp_path / "empty", device.agency_key, tmp_path / "out")


def test_pre_event_footage_is_exported(tmp_path: Path, make_device) -> None:
    """The officer presses record at frame 45: the 2 s held before the press are in the MP4."""
    device = make_device(tmp_path / "device")
    camera = SimCamera(WIDTH, HEIGHT, FPS)
    buffer = PreEventBuffer(duration_s=2.0)
    segmenter = Segmenter(device.store.open_sealer(), "rec-pre", segment_s=1.0)
    with PyAVEncoder(buffer, WIDTH, HEIGHT, FPS, bitrate=300_000) as encoder:
        for number, image, ts in camera.frames(60):
            if number == 45:
                buffer.open_output(segmenter)
                segmenter.add_marker("record pressed", ts)
            encoder.encode(image, ts)
    buffer.close_output()
    segmenter.close()
    (rec,) = export_evidence(device.offload(tmp_path / "pulled"), device.agency_key, tmp_path / "out").recordings
    numbers = mp4_frame_numbers(rec.mp4)[0]
    first = numbers[0]
    assert first % FPS == 0 and first <= 45 - 2 * FPS  # whole GOPs, at least the 2 s asked for
    assert numbers == list(range(first, 60))
    report = json.loads(rec.report.read_text())
    assert [(m["label"], m["offset_s"]) for m in report["markers"]] == [("record pressed", (45 - first) / FPS)]


def test_recovered_segment_and_gap_are_exported_and_reported(tmp_path: Path, make_device) -> None:
    device = make_device(tmp_path / "device")
    device.record_frames("rec-cut", range(25), segment_s=3.0, power_cut=True)
    assert device.reboot() == ["seg-0000000001"]
    device.record_frames("rec-gap", [*range(40, 55), *range(70, 85)])
    pulled = device.offload(tmp_path / "pulled")
    cut, gap = export_evidence(pulled, device.agency_key, tmp_path / "out").recordings

    # Power cut: every sealed GOP is exported (frames 20-24 were in flight and are lost).
    assert mp4_frame_numbers(cut.mp4)[0] == list(range(20))
    report = json.loads(cut.report.read_text())
    assert report["recovered_segments"] == ["seg-0000000001.seg"] and report["segments"][0]["recovered"]
    assert report["frame_count"] == 20 and report["gaps"] == []

    # A 1.6 s hole in the frame stream is kept in the MP4's timeline and named in the report.
    numbers, times, _ = mp4_frame_numbers(gap.mp4)
    assert numbers == [*range(40, 55), *range(70, 85)]
    assert times[15] - times[14] == pytest.approx(1.6, abs=1e-6)
    report = json.loads(gap.report.read_text())
    assert [(g["after_timestamp_us"], g["gap_us"]) for g in report["gaps"]] == [(5_400_000, 1_600_000)]
    # ... and, although it lies inside a segment, it is a chapter of the MP4 (written once frames showed it).
    with av.open(str(gap.mp4)) as container:
        chapters = [(float(c["start"] * c["time_base"]), c["metadata"]["title"]) for c in container.chapters()]
    assert chapters == [(0.0, "start"), (1.5, "GAP: 1.5 s without video")]
    assert mp4_frame_numbers(gap.mp4)[0] == [*range(40, 55), *range(70, 85)]  # packets unchanged by the rewrite


@settings(max_examples=25)
@given(st.binary(max_size=400))
def test_fuzz_garbage_first_frame_is_refused_cleanly(data: bytes) -> None:
    """Authenticated plaintext is trusted, but a device bug must still give a clear error, not a crash."""
    with tempfile.TemporaryDirectory() as d:
        muxer = Mp4Remuxer(Path(d) / ".x.partial", Fraction(30))
        try:
            muxer.add(Frame(data, True, 0))
            muxer.add(Frame(data, False, 33_333))
            muxer.finish(Path(d) / "x.mp4", 0)
        except ExportError:
            muxer.abort()
        assert not (Path(d) / ".x.partial").exists()
