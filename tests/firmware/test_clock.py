"""The clock's known error: drift measured against references, a bound that grows and shrinks,
jumps audit-logged. Time is a fake clock the test advances: nothing sleeps."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware.clock import CLOCK_JUMP, CLOCK_REFERENCE, ClockConfig, ClockTracker
from firmware.offload import OffsetClock
from secure_store.audit import AuditLog, read_entries
from secure_store.clock_bound import REF_DOCK, REF_GPS, ClockBound

T0 = 1_796_000_000.0  # true UTC at the start


class DriftingClock:
    """True time, and a device base clock that runs ``ppm`` fast; the test moves time on."""

    def __init__(self, ppm: float) -> None:
        self.true = T0
        self.ppm = ppm
        self.mono = 100.0
        self.step = 0.0  # a jump of the base clock (someone set it)

    def base(self) -> float:
        return T0 + (self.true - T0) * (1 + self.ppm * 1e-6) + self.step

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.true += seconds
        self.mono += seconds * (1 + self.ppm * 1e-6)  # the same crystal


@pytest.fixture
def rig(tmp_path: Path):
    fake = DriftingClock(20.0)
    key = Ed25519PrivateKey.generate()
    audit = AuditLog(tmp_path / "audit", key, "CAM-1", clock=fake.base)
    clock = OffsetClock(tmp_path / "state" / "clock.json", base=fake.base)
    tracker = ClockTracker(clock, audit, ClockConfig(), monotonic=fake.monotonic)
    return fake, clock, tracker, tmp_path / "audit"


def dock_sync(fake: DriftingClock, clock: OffsetClock, tracker: ClockTracker) -> None:
    _, new = clock.sync(fake.true, "dock:test")
    tracker.dock_synced(new)


def test_measured_drift_matches_the_simulated_drift(rig) -> None:
    fake, clock, tracker, audit_dir = rig
    for _ in range(6):  # a dock sync every 2 h
        dock_sync(fake, clock, tracker)
        fake.advance(2 * 3600)
    assert tracker.drift == pytest.approx(20e-6, rel=0.10)
    entries = [e for e in read_entries(audit_dir) if e.event == CLOCK_REFERENCE]
    assert len(entries) == 6 and entries[-1].details["source"] == "dock"
    assert entries[-1].details["drift_ppb"] == pytest.approx(20_000, rel=0.10)
    # the device was off by 2 h x 20 ppm = 144 ms at each sync after the first
    assert entries[-1].details["offset_us"] == pytest.approx(-144_000, abs=100)


def test_bound_grows_with_time_and_shrinks_after_a_dock_sync(rig) -> None:
    fake, clock, tracker, _ = rig
    assert tracker.bound().error_us is None  # never synced: unknown, not zero
    dock_sync(fake, clock, tracker)
    just_after = tracker.bound()
    assert just_after.ref == REF_DOCK and just_after.error_us == 20_000
    bounds = []
    for _ in range(3):
        fake.advance(3600)
        bounds.append(tracker.bound().error_us)
    assert bounds[0] < bounds[1] < bounds[2]
    # drift not measured yet: the 50 ppm tolerance, 20 ms + 50 ppm x 3 h
    assert bounds[2] == pytest.approx(20_000 + 50e-6 * 3 * 3600 * (1 + 20e-6) * 1e6, rel=1e-3)
    true_error_us = abs((fake.true - (fake.base() + clock.offset_us / 1e6)) * 1e6)
    assert true_error_us <= bounds[2]
    dock_sync(fake, clock, tracker)
    assert tracker.bound().error_us == 20_000
    for _ in range(2):  # once drift is measured the bound grows at ~20 ppm, and still holds
        fake.advance(3600)
        dock_sync(fake, clock, tracker)
    fake.advance(3 * 3600)
    b = tracker.bound()
    true_error_us = abs((fake.true - (fake.base() + clock.offset_us / 1e6)) * 1e6)
    assert b.drift_ppb == pytest.approx(20_000, rel=0.10)
    assert true_error_us <= b.error_us < 20_000 + 30e-6 * 3 * 3600 * 1e6  # 20 ppm + its uncertainty + 5 ppm
    assert "dock sync" in b.describe() and "ppm" in b.describe()


def test_a_segment_keeps_its_own_offset_across_a_sync(rig) -> None:
    fake, clock, tracker, _ = rig
    dock_sync(fake, clock, tracker)
    fake.advance(6 * 3600)
    start = tracker.segment_bound(None)      # a segment starts with the old offset
    dock_sync(fake, clock, tracker)          # the dock syncs mid-segment
    end = tracker.segment_bound(start)
    # the segment's UTC is off by the whole step the sync took (6 h x 20 ppm = 432 ms): still bounded
    assert end.error_us >= 432_000
    assert tracker.segment_bound(None).error_us == 20_000  # a new segment gets the fresh bound


def test_gps_time_is_a_reference_but_never_moves_the_clock(rig) -> None:
    fake, clock, tracker, audit_dir = rig
    dock_sync(fake, clock, tracker)
    fake.advance(24 * 3600)
    offset = clock.offset_us
    before = tracker.bound().error_us
    gps_utc_us = round(fake.true * 1e6) - 200_000  # NMEA arrived 200 ms after its epoch
    assert tracker.gps_time(gps_utc_us, fake.base())
    assert clock.offset_us == offset
    b = tracker.bound()
    assert b.ref == REF_GPS and b.error_us < before
    true_error_us = abs((fake.true - (fake.base() + clock.offset_us / 1e6)) * 1e6)
    assert true_error_us <= b.error_us
    assert not tracker.gps_time(gps_utc_us + 1_000_000, fake.base() + 1)  # rate-limited
    gps = [e for e in read_entries(audit_dir) if e.event == CLOCK_REFERENCE and e.details["source"] == "gps"]
    assert len(gps) == 1


def test_a_jump_is_audit_logged_and_the_bound_becomes_unknown(rig) -> None:
    fake, clock, tracker, audit_dir = rig
    dock_sync(fake, clock, tracker)
    fake.advance(10)
    assert tracker.check_jump() is None
    fake.step = -3600.0  # someone set the system clock back an hour
    fake.advance(1)
    assert tracker.check_jump() == pytest.approx(-3600e6, abs=1000)
    assert tracker.bound().error_us is None and tracker.bound().ref == 0
    jumps = [e for e in read_entries(audit_dir) if e.event == CLOCK_JUMP]
    assert len(jumps) == 1 and jumps[0].details["jump_us"] == pytest.approx(-3600e6, abs=1000)


def test_the_manifest_clock_block_round_trips() -> None:
    for bound in (ClockBound(), ClockBound(45_000, REF_DOCK, 3 * 3600 * 10**6, 4_000)):
        assert ClockBound.decode(bound.encode()) == bound
    assert ClockBound(45_000, REF_DOCK, 3 * 3600 * 10**6, 4_000).describe() == \
        "dock sync 3.0 h ago, measured drift +4.0 ppm -> +-45.0 ms"
    with pytest.raises(ValueError):
        ClockBound.decode(ClockBound(5, 0, 1, None).encode())
