"""Pulling over real pty pairs: full pull, idempotent rerun, resume after a pulled cable, noisy lines."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
from pathlib import Path

import pytest

from dock.client import PullError, pull
from hw_sim.link import Faults, LinkedPtys
from secure_store.audit_format import read_entries
from secure_store.verify import verify_path

DEVICE_ID = "CAM-0042"


def _archive(out, name: str) -> bytes:
    return (out / DEVICE_ID / "evidence" / name).read_bytes()


def _event_names(device) -> list[str]:
    return [e.event for e in device.events()]


def test_full_pull_of_a_multi_segment_recording(device, keyset, tmp_path):
    device.record(segments=3, recording_id="rec-a")
    device.record(segments=2, recording_id="rec-b")
    before = device.evidence()
    assert len(before) == 10
    device.store.quota_bytes = device.store.storage_status().used_bytes   # full, whatever the disk
    out = tmp_path / "archive"
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        summary = pull(cable.b_path, out, keyset.dock)
        served.join()
    assert served.error is None
    assert summary.ok, summary.problems
    # byte-identical copies of every segment and manifest
    for name, data in before.items():
        assert _archive(out, name) == data
    segments = sorted(n for n in before if n.endswith(".seg"))
    assert summary.verified == segments and summary.confirmed == segments
    # the device released exactly what was confirmed, and logged each step
    assert device.evidence() == {}
    events = _event_names(device)
    assert events.count("offload_confirm") == 5 and events.count("delete") == 5
    assert "offload_start" in events and "clock_sync" in events
    # the offset the device set from the dock's time is the one the dock reports
    sync = next(e for e in device.events() if e.event == "clock_sync")
    assert summary.clock_offset_us == sync.details["offset_us"] == device.clock.offset_us
    assert isinstance(summary.clock_offset_us, int)
    # the archive verifies on its own with the pinned identity, audit log included
    report = verify_path(out / DEVICE_ID)
    assert report.ok, [str(p) for p in report.problems]
    assert len(report.segments) == 5 and report.audit_logs
    assert summary.status["device_id"] == DEVICE_ID and summary.status["battery_percent"] == 77
    # the pull's receipt anchors what the dock received: deleting it from the store afterwards fails
    receipt = json.loads(Path(summary.receipt).read_text())["body"]
    assert [m["seq"] for m in receipt["manifests"]] == [1, 2, 3, 4, 5]
    assert receipt["audit_head"]["seq"] == max(e.seq for e in read_entries(out / DEVICE_ID / "audit"))
    (out / DEVICE_ID / "evidence" / "seg-0000000005.seg").unlink()
    (out / DEVICE_ID / "evidence" / "seg-0000000005.manifest").unlink()
    reasons = [p.reason for p in verify_path(out / DEVICE_ID).problems]
    assert any("records that the dock received and confirmed it" in r for r in reasons), reasons
    assert summary.status["storage"]["level"] == "full" and summary.status["storage"]["free_bytes"] == 0


def test_a_pull_without_time_sync_leaves_the_device_clock_alone(device, keyset, tmp_path):
    device.record(segments=1)
    device.clock.sync(1_800_000_000.0, "gps")             # an earlier, different source set it
    offset = device.clock.offset_us
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        summary = pull(cable.b_path, tmp_path / "archive", keyset.dock, sync_time=False)
        served.join()
    assert summary.ok and summary.confirmed == ["seg-0000000001.seg"]
    assert summary.clock_offset_us is None
    assert "clock_sync" not in _event_names(device)
    assert (device.clock.offset_us, device.clock.source) == (offset, "gps")


def test_only_what_the_evidence_store_holds_is_confirmed(device, keyset, tmp_path):
    """``store_holds`` is asked per verified segment, with the dock's device directory; the others wait."""
    device.record(segments=3)
    out = tmp_path / "archive"
    asked = []

    def store_holds(device_dir, name):
        asked.append((device_dir, name))
        return name != "seg-0000000002.seg"

    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        summary = pull(cable.b_path, out, keyset.dock, store_holds=store_holds)
        served.join()
    segments = ["seg-0000000001.seg", "seg-0000000002.seg", "seg-0000000003.seg"]
    assert asked == [(out / DEVICE_ID, name) for name in segments]
    assert summary.verified == segments and summary.ok
    assert summary.confirmed == ["seg-0000000001.seg", "seg-0000000003.seg"]
    assert summary.awaiting_store == ["seg-0000000002.seg"]
    assert sorted(device.evidence()) == ["seg-0000000002.manifest", "seg-0000000002.seg"]


@pytest.mark.parametrize("takes", ["digests", "digests and parts"])
def test_a_store_that_takes_digests_is_handed_those_the_fetch_checked(device, keyset, tmp_path, takes):
    """``dock.ingest`` stores from the digests the fetch verified (no second read): a ``store_holds``
    that takes ``digests`` (and ``parts``) gets, with the device directory and the segment, the
    SHA-256 of every fetched file and of each 8 MiB part (one part here, base64 as S3 wants it)."""
    device.record(segments=2)
    before = device.evidence()
    out = tmp_path / "archive"
    asked = []
    if takes == "digests":
        def store_holds(device_dir, name, digests):
            asked.append((device_dir, name, dict(digests), None))
            return True
    else:
        def store_holds(device_dir, name, digests, parts):
            asked.append((device_dir, name, dict(digests), dict(parts)))
            return True

    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        summary = pull(cable.b_path, out, keyset.dock, store_holds=store_holds)
        served.join()
    segments = ["seg-0000000001.seg", "seg-0000000002.seg"]
    assert summary.confirmed == segments and device.evidence() == {}
    sha = {name: hashlib.sha256(data).hexdigest() for name, data in before.items()}
    parts = {name: [base64.b64encode(hashlib.sha256(data).digest()).decode()] for name, data in before.items()}
    assert [(d, n, digests) for d, n, digests, _ in asked] == [(out / DEVICE_ID, name, sha) for name in segments]
    assert [p for *_, p in asked] == ([None, None] if takes == "digests" else [parts, parts])
    assert isinstance(summary.retransmits, int) and summary.retransmits >= 0   # a count, if only of frames


def test_a_full_archive_disk_is_one_line_and_nothing_is_confirmed(device, keyset, make_tmpfs):
    """The archive disk fills up mid-fetch (a small tmpfs of the test's own, nearly full): the pull
    stops with one line that says so, names the archive and the device, and confirms nothing."""
    device.record(segments=2)                                         # ~120 KB each
    before = device.evidence()
    disk = make_tmpfs(1)
    with open(disk / "other-writer.bin", "ab", buffering=0) as filler:  # another writer takes all but ~40 KB
        try:
            while True:
                filler.write(b"\xa5" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        filler.truncate(filler.tell() - 40 * 1024)
    out = disk / "archive"
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        with pytest.raises(PullError) as full:
            pull(cable.b_path, out, keyset.dock)
        served.join()
    assert str(full.value) == (
        f"archive {out} is full (No space left on device) while pulling {DEVICE_ID}: 0 segment(s) confirmed "
        "before that; nothing else was confirmed and the device keeps it; free space on the dock and pull again "
        "(the pull resumes)")
    assert device.evidence() == before


def test_a_rerun_with_the_progress_bar_on_counts_the_files_it_holds(device, keyset, tmp_path, capsys):
    """With a progress bar (a dock at a terminal): it counts held files as done, shows bytes (B, not
    bits) in binary-scaled units, and is cleared when the pull ends, leaving no line behind."""
    from tqdm import tqdm
    device.record(segments=1)
    total = sum(len(data) for data in device.evidence().values())
    out = tmp_path / "archive"
    for _ in range(2):
        with LinkedPtys() as cable:
            served = device.serve(cable.a_path)
            summary = pull(cable.b_path, out, keyset.dock, progress=True, confirm=False)
            served.join()
        err = capsys.readouterr().err
        assert err.startswith(f"\rpull {DEVICE_ID}:") and f"/{tqdm.format_sizeof(total, divisor=1024)} [" in err, err
        assert "B/s" in err and "b/s" not in err, err
        assert err.endswith("\r") and "\n" not in err and err.rsplit("\r", 2)[-2].strip() == "", err
    assert summary.ok and sorted(summary.skipped) == ["seg-0000000001.manifest", "seg-0000000001.seg"]
    assert all(n.startswith("audit/") for n in summary.fetched)


def test_rerun_is_idempotent_and_new_footage_follows(device, keyset, tmp_path):
    device.record(segments=2)
    out = tmp_path / "archive"
    for _ in range(2):
        with LinkedPtys() as cable:
            served = device.serve(cable.a_path)
            summary = pull(cable.b_path, out, keyset.dock)
            served.join()
    assert summary.ok and summary.confirmed == [] and summary.bytes_fetched < 64 * 1024  # only the audit log
    assert [n for n in summary.fetched if not n.startswith("audit/")] == []
    device.record(segments=1)
    new = device.evidence()
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        summary = pull(cable.b_path, out, keyset.dock)
        served.join()
    assert summary.confirmed == ["seg-0000000003.seg"]
    assert all(_archive(out, name) == data for name, data in new.items())
    assert verify_path(out / DEVICE_ID).ok  # the chain runs on across pulls


def test_disconnect_mid_segment_then_resume(device, keyset, tmp_path):
    device.record(segments=2, chunks=4, frame_bytes=20_000)   # ~400 KB per segment
    before = device.evidence()
    out = tmp_path / "archive"
    with LinkedPtys(disconnect_after=600_000) as cable:       # in the middle of the second segment
        served = device.serve(cable.a_path)
        with pytest.raises(PullError, match="rerun to resume"):
            pull(cable.b_path, out, keyset.dock)
        served.join()
    parts = list((out / DEVICE_ID / "evidence").glob(".*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size > 0
    assert device.evidence() == before                         # nothing confirmed, nothing released
    kept = parts[0].stat().st_size
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        summary = pull(cable.b_path, out, keyset.dock)
        served.join()
    assert summary.ok, summary.problems
    assert summary.bytes_resumed == kept
    assert summary.bytes_fetched < sum(len(d) for d in before.values())   # the kept bytes were not resent
    for name, data in before.items():
        assert hashlib.sha256(_archive(out, name)).digest() == hashlib.sha256(data).digest()
    assert not list((out / DEVICE_ID / "evidence").glob(".*.part"))
    assert device.evidence() == {}


@pytest.mark.parametrize("faults", [
    Faults(bit_error_rate=1e-4, seed=7),
    Faults(drop_rate=1e-4, seed=8),
    Faults(bit_error_rate=2e-5, drop_rate=2e-5, stall_every=100_000, stall_s=0.3, seed=9),
], ids=["bit-errors-1e-4", "dropped-bytes", "errors-drops-stalls"])
def test_noisy_line_retransmits_and_files_are_identical(device, keyset, tmp_path, faults):
    device.record(segments=2, chunks=3, frame_bytes=8000)
    before = device.evidence()
    out = tmp_path / "archive"
    with LinkedPtys(faults) as cable:
        served = device.serve(cable.a_path)
        summary = pull(cable.b_path, out, keyset.dock)
        served.join()
        damage = cable.stats()
    assert damage["bit_errors"] + damage["dropped"] > 0
    assert served.result.retransmits > 0 and summary.damaged_frames + summary.retransmits > 0
    assert summary.ok, summary.problems
    for name, data in before.items():
        assert _archive(out, name) == data
    assert len(summary.confirmed) == 2 and device.evidence() == {}


@pytest.mark.parametrize("spread", [False, True], ids=["independent", "spread-over-every-read"])
def test_a_pull_at_ber_1e4_completes_with_identical_files(device, keyset, tmp_path, spread):
    """About 2 MB of sealed footage at one flipped bit in 10^4: every file arrives byte for byte."""
    device.record(segments=2, chunks=4, frame_bytes=50_000)
    before = device.evidence()
    out = tmp_path / "archive"
    with LinkedPtys(Faults(bit_error_rate=1e-4, spread=spread, seed=21)) as cable:
        served = device.serve(cable.a_path)
        summary = pull(cable.b_path, out, keyset.dock)
        served.join()
        damage = cable.stats()
    assert damage["bit_errors"] > 500                       # the line really was noisy
    assert served.error is None and served.result.ended == "the peer closed the session"   # orderly, no reason
    assert summary.ok, summary.problems
    assert summary.damaged_frames + summary.repaired_frames > 0
    for name, data in before.items():
        assert (out / DEVICE_ID / "evidence" / name).read_bytes() == data
    assert len(summary.confirmed) == 2 and device.evidence() == {}
