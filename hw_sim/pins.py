"""A finger for gpiozero's MockFactory: press, hold, double-press and bounce buttons by pin.

Inputs are wired active-low with pull-ups (as on the device), so "pressed" or "active"
drives the pin low. A Finger keeps wall-clock time, as a real one does, for firmware on
``firmware.controls.MonotonicClock`` (the device, the demo); tests that must not depend on
a busy machine step a manual clock with their own finger instead (tests/firmware/conftest.py).
"""

from __future__ import annotations

import time

from gpiozero.pins.mock import MockFactory, MockPWMPin


class SimPin(MockPWMPin):
    """A mock pin a finger can hold down: a switch closed to ground beats the pull-up.

    gpiozero's MockPin drives an input to its pull when a device claims it, which would
    release a button held since before boot; a grounded SimPin stays low, as real ones do.
    """

    grounded = False

    def _set_pull(self, value):
        super()._set_pull(value)
        if self.grounded and self._function == "input":
            self.drive_low()


def sim_pin_factory() -> MockFactory:
    """A MockFactory of SimPins (which also do PWM: the haptic motor is a PWMOutputDevice)."""
    return MockFactory(pin_class=SimPin)


class Finger:
    """Presses buttons and flips inputs on a MockFactory's pins."""

    def __init__(self, factory: MockFactory, settle_s: float = 0.03):
        self.factory = factory
        self.settle_s = settle_s  # how long the firmware needs to believe a level

    def pin(self, number: int):
        return self.factory.pin(number)

    def down(self, number: int) -> None:
        pin = self.pin(number)
        pin.grounded = True
        pin.drive_low()

    def up(self, number: int) -> None:
        pin = self.pin(number)
        pin.grounded = False
        pin.drive_high()

    def press(self, number: int, duration_s: float = 0.12) -> None:
        """One clean press and release; returns once the release has settled."""
        self.down(number)
        time.sleep(duration_s)
        self.up(number)
        time.sleep(self.settle_s * 2)

    def double(self, number: int, gap_s: float = 0.15) -> None:
        """Two presses ``gap_s`` apart (well inside the default 1 s window)."""
        self.press(number)
        time.sleep(gap_s)
        self.press(number)

    def hold(self, number: int, seconds: float) -> None:
        """Hold down for ``seconds`` (plus a margin for the hold timer), then release."""
        self.down(number)
        time.sleep(seconds + 0.25)
        self.up(number)
        time.sleep(self.settle_s * 2)

    def bounce(self, number: int, edges: int = 8, interval_s: float = 0.002, end_pressed: bool = False) -> None:
        """Contact bounce: ``edges`` alternating edges a few ms apart (a knock if it ends released)."""
        for i in range(edges):
            (self.down if i % 2 == 0 else self.up)(number)
            time.sleep(interval_s)
        if end_pressed:
            self.down(number)
        else:
            self.up(number)
        time.sleep(self.settle_s * 2)

    def set_active(self, number: int, active: bool) -> None:
        """An active-low input (holster, lightbar, dock detect) on or off, then settle."""
        (self.down if active else self.up)(number)
        time.sleep(self.settle_s * 2)
