"""A simulated battery: a charge level that drains with time, and a hand to set it.

The firmware only reads ``percent``; the simulator's console (``battery 5``) and tests
call ``set``. Draining follows the wall clock (a shift of ``hours_full`` hours on a full
charge) unless a clock is given, so a demo can also drain it in sim time.
"""

from __future__ import annotations

import threading
import time
from typing import Callable


class SimBattery:
    """Charge in percent, draining linearly; ``charging`` (docked) refills it instead."""

    def __init__(self, percent: float = 100.0, hours_full: float = 12.0,
                 clock: Callable[[], float] = time.monotonic):
        if not 0 <= percent <= 100:
            raise ValueError(f"battery percent must be 0-100, not {percent!r}")
        self._clock = clock
        self._lock = threading.Lock()
        self._percent = float(percent)
        self._since = clock()
        self._rate = 100.0 / (hours_full * 3600.0)  # percent per second
        self.charging = False

    def _advance(self) -> None:
        now = self._clock()
        elapsed, self._since = now - self._since, now
        delta = self._rate * elapsed * (4 if self.charging else -1)  # a dock charges 4x faster
        self._percent = min(100.0, max(0.0, self._percent + delta))

    @property
    def percent(self) -> int:
        """The level the power monitor reports, a whole percent."""
        with self._lock:
            self._advance()
            return round(self._percent)

    def set(self, percent: float) -> None:
        """Jump to a level (the simulator's ``battery N`` command)."""
        if not 0 <= percent <= 100:
            raise ValueError(f"battery percent must be 0-100, not {percent!r}")
        with self._lock:
            self._advance()
            self._percent = float(percent)
