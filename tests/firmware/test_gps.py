"""The GPS seam: the real pyserial + pynmeagps reader against the hw_sim receiver on a real pty."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from firmware.gps import LocationLog, NmeaAssembler, SerialGps
from hw_sim.gps import UERE_M, Route, SimGps, distance_m
from recorder.location import Fix


class Harness:
    """A SimGps on a pty, a SerialGps reading it, and the fixes it delivered (stamped by the test)."""

    def __init__(self, tmp_path: Path, route: Route) -> None:
        self.sensor_us = 0
        self.fixes: list[Fix] = []
        self.cond = threading.Condition()
        self.sim = SimGps(tmp_path / "gps", route)
        self.reader = SerialGps(str(self.sim.path), 9600, self._on_fix, lambda: (self.sensor_us, 0.0), retry_s=0.02)
        self.reader.start()
        assert self.reader.connected.wait(10)

    def _on_fix(self, fix: Fix, base_s: float) -> None:
        with self.cond:
            self.fixes.append(fix)
            self.cond.notify_all()

    def counts(self) -> dict[str, int]:
        return self.reader.stats()

    def wait(self, what, timeout: float = 10.0) -> None:
        """Wait until ``what()`` holds (the reader runs on its own thread); fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not what():
                assert time.monotonic() < deadline, f"reader never got there: {self.counts()}"
                self.cond.wait(0.01)

    def epoch(self, t: float, *, lines: int = 3) -> None:
        """Emit the epoch at sim second ``t`` (stamped t s of sensor time); wait until it is read."""
        self.sensor_us = round(t * 1e6)
        before = self._read_lines()
        self.sim.emit(t)
        self.wait(lambda: self._read_lines() >= before + lines)

    def _read_lines(self) -> int:
        c = self.counts()
        return c.get("sentences", 0) + c.get("bad", 0)

    def close(self) -> None:
        self.reader.stop()
        self.sim.close()


@pytest.fixture
def harness(tmp_path):
    h = Harness(tmp_path, Route(tunnels=[(5.0, 8.0)]))
    yield h
    h.close()


def test_fixes_follow_the_route_within_the_stated_accuracy(harness: Harness) -> None:
    for t in range(5):
        harness.epoch(t)
    harness.wait(lambda: len(harness.fixes) == 5)
    route = harness.sim.route
    for t, fix in enumerate(harness.fixes):
        lat, lon, speed, heading = route.state(t)
        assert fix.has_fix and fix.quality == 1 and fix.mode == 3 and fix.satellites == 9
        assert fix.sensor_ts_us == t * 1_000_000
        assert distance_m(fix.lat, fix.lon, lat, lon) <= fix.hdop * UERE_M
        assert fix.speed_mps == pytest.approx(speed, abs=0.01) and fix.course_deg == pytest.approx(heading)
        assert fix.gps_utc_us == round(route.utc(t).timestamp() * 1e6)
        assert fix.alt_m == pytest.approx(route.alt_m)


def test_a_tunnel_is_stated_as_no_fix(harness: Harness) -> None:
    for t in range(4, 10):
        harness.epoch(t)
    harness.wait(lambda: len(harness.fixes) == 6)
    assert [f.has_fix for f in harness.fixes] == [True, False, False, False, True, True]
    for f in harness.fixes[1:4]:
        assert f.lat is None and f.lon is None and f.quality == 0
        assert f.gps_utc_us is not None  # the receiver still knows the time


def test_bad_checksums_and_garbage_are_counted_and_skipped(harness: Harness) -> None:
    harness.epoch(0)
    harness.sim.corrupt_next = 3  # a whole epoch with wrong checksums
    harness.epoch(1)
    harness.sim.garbage = 300
    harness.epoch(2)
    harness.epoch(3)
    harness.wait(lambda: len(harness.fixes) == 3)
    counts = harness.counts()
    assert counts["bad"] >= 3 and counts["garbage"] >= 1
    assert [f.sensor_ts_us for f in harness.fixes] == [0, 2_000_000, 3_000_000]  # epoch 1 is gone, not guessed
    assert all(f.has_fix for f in harness.fixes)


def test_the_reader_reconnects_when_the_receiver_comes_back(harness: Harness) -> None:
    harness.epoch(0)
    harness.sim.unplug()
    harness.wait(lambda: harness.counts().get("disconnects", 0) == 1 and not harness.reader.connected.is_set())
    harness.sim.emit(1)  # into the void
    harness.sim.plug()
    harness.wait(lambda: harness.counts().get("connects", 0) == 2)
    harness.epoch(2)
    harness.epoch(3)
    harness.wait(lambda: len(harness.fixes) >= 3)
    assert [f.sensor_ts_us for f in harness.fixes][-2:] == [2_000_000, 3_000_000]
    assert all(f.has_fix for f in harness.fixes)


def test_nonsense_lines_never_raise() -> None:
    got = []
    assembler = NmeaAssembler(lambda fix, base: got.append(fix), lambda: (1, 0.0))
    for line in [b"", b"\xff" * 500, b"$", b"$GPGGA,,,*00", b"$GPRMC,1,2,3*ZZ", b"no dollar", b"$$$$",
                 "$GPGGA,é".encode(), b"$GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00*74"]:
        assembler.feed(line)
    assembler.flush()
    assert got == []
    assert assembler.counts["bad"] >= 5 and assembler.counts["garbage"] >= 2


def fix_at(s: float, has_fix: bool = True) -> Fix:
    us = round(s * 1e6)
    return Fix(us, 1, 3, 8, 51.0, 0.0, 10.0, 1.0) if has_fix else Fix.no_fix(us)


def test_location_policy_defaults_to_recording_only() -> None:
    log = LocationLog()
    for s in range(0, 10):
        log.add(fix_at(s))
    assert log.take(0, 4_500_000) == []  # buffering, no recording: nothing sealed
    log.recording_started(5_000_000)
    assert [f.sensor_ts_us for f in log.take(5_000_000, 9_500_000)] == [5_000_000, 6_000_000, 7_000_000,
                                                                        8_000_000, 9_000_000]


def test_location_policy_pre_event_and_thinning() -> None:
    log = LocationLog(pre_event=True, interval_s=2.0)
    for tenth in range(0, 60):
        log.add(fix_at(tenth / 10))
    assert [f.sensor_ts_us for f in log.take(0, 6_000_000)] == [0, 2_000_000, 4_000_000]


def test_silence_is_stated_as_no_fix_never_a_stale_fix() -> None:
    log = LocationLog()
    log.recording_started(0)
    log.add(fix_at(1))
    assert [f.has_fix for f in log.take(0, 1_900_000)] == [True]
    # the receiver goes quiet: the next chunks say "no fix", they do not repeat the old one
    taken = log.take(2_000_000, 5_000_000)
    assert len(taken) == 1 and not taken[0].has_fix and taken[0].sensor_ts_us == 5_000_000
    log.add(fix_at(5.5, has_fix=False))
    assert [f.has_fix for f in log.take(5_000_001, 6_000_000)] == [False]
