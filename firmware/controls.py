"""The officer's controls, as gpiozero devices, turned into a few unmistakable events.

Events go to one callback, ``emit(name, **details)``; the state machine decides what
they mean in its current state:

=========  ==================================================================
``record``   record button: a double press within 1 s (default) or a single press
``stop``     record button held 3 s
``marker``   function button: a press (released before the hold time)
``mute``     function button: a second press within ``double_press_s`` of a first one
             (sound off, or back on; the first press of the pair has placed a marker)
``stealth``  function button held 3 s (only if ``stealth_allowed``)
``auto``     holster or lightbar input became active (``source=...``)
``dock``     dock-detect became active; ``undock`` when it goes inactive
=========  ==================================================================

Contact bounce and knocks: every input is *settled* — an edge counts only once the
pin has stayed at its new level for ``bounce_s`` (sampled after the last edge), so a
burst of bounces is one press or nothing, never two presses. A button already held
when the device boots is the resting state, not a press, and so is never a gesture.
Devices are made through gpiozero's pin-factory seam: pass ``pin_factory=MockFactory()``
(or set ``gpiozero.Device.pin_factory``) to drive them from tests and the simulator.

Time goes through a second seam, ``clock`` (a ``Clock``): settling, hold times and the
double-press window all read it and wait on it. The real one is ``MonotonicClock``
(``time.monotonic`` and ``threading.Timer``); tests pass a clock they step by hand, so a
gesture's outcome depends on the times it was given, never on how busy the machine is.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Protocol

from gpiozero import Button, DigitalInputDevice
from gpiozero.exc import GPIODeviceClosed

from firmware.config import ControlsConfig, PinConfig

log = logging.getLogger(__name__)

Emit = Callable[..., None]


class Timer(Protocol):
    """A pending call that can still be called off."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Where the controls read the time and wait: the seam that makes gestures testable."""

    def monotonic(self) -> float: ...

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer: ...


class MonotonicClock:
    """The device's clock: ``time.monotonic``, and daemon ``threading.Timer`` threads."""

    def monotonic(self) -> float:
        return time.monotonic()

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        timer = threading.Timer(max(0.0, delay_s), callback)
        timer.daemon = True
        timer.start()
        return timer


class SettledInput:
    """Confirms a gpiozero input's level changes once they have held for ``settle_s``.

    ``on_change(active, since)`` is called with the new level and the monotonic time of
    the first edge of the change; changes that do not last (bounce, a knock) are dropped.
    """

    def __init__(
        self, device, settle_s: float, on_change: Callable[[bool, float], None], clock: Clock | None = None
    ):
        self.device = device
        self._settle_s = settle_s
        self._clock = clock or MonotonicClock()
        self._on_change = on_change
        self._lock = threading.Lock()
        self._generation = 0
        self._first_edge: float | None = None
        self.active = bool(device.is_active)  # at boot: the resting level, whatever it is
        self.since: float | None = None  # first edge of the current settled level (None: since boot)
        device.when_activated = self._edge
        device.when_deactivated = self._edge

    def _edge(self) -> None:
        with self._lock:
            self._generation += 1
            generation = self._generation
            if self._first_edge is None:
                self._first_edge = self._clock.monotonic()
        self._clock.call_later(self._settle_s, lambda: self._settle(generation))

    def _settle(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return  # a later edge came; its own timer decides
            since, self._first_edge = self._first_edge, None
            try:
                level = bool(self.device.is_active)
            except GPIODeviceClosed:
                return  # the device was shut down while this edge settled
            if level == self.active or since is None:
                return
            self.active, self.since = level, since
        self._on_change(level, since)

    def close(self) -> None:
        self.device.close()


class Controls:
    """Record and function buttons, auto-trigger inputs and dock detect, as events."""

    def __init__(
        self,
        pins: PinConfig,
        settings: ControlsConfig,
        emit: Emit,
        *,
        pin_factory=None,
        clock: Clock | None = None,
    ):
        self._settings = settings
        self._emit = emit
        self._clock = clock or MonotonicClock()
        self._inputs: list[SettledInput] = []
        self._last_record_press: float | None = None
        self._function_pressed_at: float | None = None
        self._last_function_press: float | None = None
        self._function_held = False
        bounce = settings.bounce_s

        if pins.record_button is not None:
            self.record_button = Button(
                pins.record_button, pull_up=True, bounce_time=bounce, pin_factory=pin_factory,
            )
            self._record_input = SettledInput(self.record_button, bounce, self._record_changed, self._clock)
            self._inputs.append(self._record_input)
        if pins.function_button is not None:
            self.function_button = Button(
                pins.function_button, pull_up=True, bounce_time=bounce, pin_factory=pin_factory,
            )
            self._function_input = SettledInput(self.function_button, bounce, self._function_changed, self._clock)
            self._inputs.append(self._function_input)
        for source in ("holster", "lightbar"):
            pin = getattr(pins, source)
            if pin is not None:
                device = DigitalInputDevice(pin, pull_up=True, bounce_time=bounce, pin_factory=pin_factory)
                self._inputs.append(SettledInput(device, bounce, self._auto_changed(source), self._clock))
        if pins.dock_detect is not None:
            self.dock_detect = DigitalInputDevice(
                pins.dock_detect, pull_up=True, bounce_time=bounce, pin_factory=pin_factory
            )
            self._inputs.append(SettledInput(self.dock_detect, bounce, self._dock_changed, self._clock))

    @property
    def docked(self) -> bool:
        """Whether dock-detect is (settled) active right now, e.g. docked at boot."""
        return any(i.active for i in self._inputs if i.device is getattr(self, "dock_detect", None))

    def _when_held(self, settled: SettledInput, since: float, hold_s: float, on_held: Callable[[], None]) -> None:
        """Calls ``on_held`` if the press that began at ``since`` is still down ``hold_s`` later.

        Timed on the clock seam rather than gpiozero's hold thread, so that tests step it.
        """
        def check() -> None:
            try:
                down = settled.active and settled.since == since and bool(settled.device.is_active)
            except GPIODeviceClosed:
                return
            if down:
                on_held()
        self._clock.call_later(since + hold_s - self._clock.monotonic(), check)

    # -- record button ------------------------------------------------------------
    def _record_changed(self, pressed: bool, since: float) -> None:
        if not pressed:
            return
        self._when_held(self._record_input, since, self._settings.stop_hold_s, self._record_held)
        if self._settings.record_start == "single":
            self._emit("record", gesture="single")
            return
        last, self._last_record_press = self._last_record_press, since
        if last is not None and since - last <= self._settings.double_press_s:
            self._last_record_press = None
            self._emit("record", gesture="double")

    def _record_held(self) -> None:
        self._last_record_press = None  # a hold is never the first half of a double press
        self._emit("stop", gesture="hold")

    # -- function button ----------------------------------------------------------
    def _function_changed(self, pressed: bool, since: float) -> None:
        if pressed:
            self._function_pressed_at, self._function_held = since, False
            self._when_held(self._function_input, since, self._settings.stealth_hold_s,
                            self._function_held_for_stealth)
            return
        pressed_at, self._function_pressed_at = self._function_pressed_at, None
        if pressed_at is not None and not self._function_held:
            last, self._last_function_press = self._last_function_press, pressed_at
            if last is not None and pressed_at - last <= self._settings.double_press_s:
                self._last_function_press = None
                self._emit("mute")
                return
            self._emit("marker", label="officer marker")

    def _function_held_for_stealth(self) -> None:
        self._function_held = True
        if self._settings.stealth_allowed:
            self._emit("stealth")
        else:
            log.info("stealth requested but not allowed by config")

    # -- auto triggers and dock ---------------------------------------------------
    def _auto_changed(self, source: str) -> Callable[[bool, float], None]:
        def changed(active: bool, since: float) -> None:
            if active and self._settings.auto_trigger:
                self._emit("auto", source=source)
        return changed

    def _dock_changed(self, active: bool, since: float) -> None:
        self._emit("dock" if active else "undock")

    def close(self) -> None:
        for settled in self._inputs:
            settled.close()
