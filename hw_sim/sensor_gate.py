"""A sensor clock that a script can stop and start: the simulated camera runs only as far as allowed.

A fast-clock ``SimCamera`` encodes as fast as the CPU allows, so "record 20 s" measured
against a person's (or a script's) wall-clock actions depends on how busy the machine
is. Behind a gate the camera stops at the sensor time it was allowed and waits, so a
script can do its presses and holds while no video passes, then let exactly the next
N seconds of video through. Same frames, same timestamps, just paused between them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

import numpy as np


class SensorGate:
    """Wraps an iterable of ``(number, image, timestamp_us)`` frames; see the module docstring."""

    def __init__(self, frames: Iterable[tuple[int, np.ndarray, int]], allowed_us: int = 0) -> None:
        self._frames = frames
        self._cond = threading.Condition()
        self._allowed_us = allowed_us
        self._closed = False

    def allow_until(self, seconds: float) -> None:
        """Let frames with timestamps up to ``seconds`` (sensor time) through."""
        with self._cond:
            self._allowed_us = max(self._allowed_us, round(seconds * 1_000_000))
            self._cond.notify_all()

    def open(self) -> None:
        """No limit any more: the camera runs freely."""
        self.allow_until(2**62 / 1e6)

    def close(self) -> None:
        """End the frames (the capture loop stops instead of waiting for ever)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def allowed_s(self) -> float:
        return self._allowed_us / 1e6

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, int]]:
        for number, image, timestamp_us in self._frames:
            with self._cond:
                while timestamp_us > self._allowed_us and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
            yield number, image, timestamp_us
