"""Shared fixtures for the device tests: a root provisioned with real keys, as a technician would;
a clock and a finger that tests step by hand, so gestures never race the machine."""

from __future__ import annotations

import heapq
import itertools
from pathlib import Path
from typing import Callable

import pytest

from firmware.provision import provision
from hw_sim.pins import Finger, sim_pin_factory
from secure_store import keys


class _Call:
    def __init__(self, callback: Callable[[], None]):
        self.callback, self.cancelled = callback, False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """``firmware.controls.Clock`` stepped by the test: ``advance(s)`` runs every call that falls
    due by then, in time order, on the test's own thread, so nothing happens between steps."""

    def __init__(self, start: float = 100.0):
        self.now = start
        self._due: list[tuple[float, int, _Call]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self.now

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> _Call:
        call = _Call(callback)
        heapq.heappush(self._due, (self.now + max(0.0, delay_s), next(self._order), call))
        return call

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while self._due and self._due[0][0] <= end:
            when, _, call = heapq.heappop(self._due)
            self.now = max(self.now, when)
            if not call.cancelled:
                call.callback()
        self.now = end

    @property
    def pending(self) -> int:
        return sum(not call.cancelled for _, _, call in self._due)


class SteppedFinger:
    """``hw_sim.pins.Finger``'s gestures with the clock stepped instead of slept: the same edges,
    at exactly the times given."""

    def __init__(self, factory, clock: ManualClock, settle_s: float = 0.03):
        self.finger, self.clock, self.settle_s = Finger(factory, settle_s), clock, settle_s

    def down(self, pin: int) -> None:
        self.finger.down(pin)

    def up(self, pin: int) -> None:
        self.finger.up(pin)

    def press(self, pin: int, duration_s: float = 0.12) -> None:
        """One clean press and release; returns once the release has settled."""
        self.down(pin)
        self.clock.advance(duration_s)
        self.up(pin)
        self.clock.advance(self.settle_s * 2)

    def double(self, pin: int, gap_s: float = 0.15) -> None:
        self.press(pin)
        self.clock.advance(gap_s)
        self.press(pin)

    def hold(self, pin: int, seconds: float) -> None:
        """Down for ``seconds`` (plus one settle time), then released and settled."""
        self.press(pin, duration_s=seconds + self.settle_s)

    def bounce(self, pin: int, edges: int = 8, interval_s: float = 0.002, end_pressed: bool = False) -> None:
        for i in range(edges):
            (self.down if i % 2 == 0 else self.up)(pin)
            self.clock.advance(interval_s)
        (self.down if end_pressed else self.up)(pin)
        self.clock.advance(self.settle_s * 2)

    def set_active(self, pin: int, active: bool) -> None:
        (self.down if active else self.up)(pin)
        self.clock.advance(self.settle_s * 2)


@pytest.fixture
def manual_clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def pin_factory():
    return sim_pin_factory()


@pytest.fixture
def stepped_finger(pin_factory, manual_clock) -> SteppedFinger:
    return SteppedFinger(pin_factory, manual_clock)


@pytest.fixture
def provision_sim_device(tmp_path: Path) -> Callable[[str], tuple[Path, dict[str, Path]]]:
    """``provision_sim_device(device_id)`` -> (device root, key files): agency, vendor and dock key pairs
    under ``tmp_path/keys``, the dock enrolled, the root at ``tmp_path/device``."""
    def make(device_id: str) -> tuple[Path, dict[str, Path]]:
        key_dir = tmp_path / "keys"
        key_dir.mkdir()
        made: dict[str, Path] = {}
        for kind in ("agency", "vendor", "dock"):
            made[kind], made[kind + "_pub"] = keys.write_keypair(kind, key_dir / kind)
        root = tmp_path / "device"
        provision(root, device_id, made["agency_pub"], made["vendor_pub"], [made["dock_pub"]])
        return root, made
    return make
