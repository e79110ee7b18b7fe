"""Typed commands for a person driving a simulated device: buttons, inputs, battery, status.

``bodycam device --sim`` reads them from stdin, one per line::

    double record        press record twice (starts a recording)
    hold record [S]      hold record (default: the configured stop hold time)
    press function       a marker while recording
    double function      mute / unmute the sound
    hold function [S]    toggle stealth
    bounce record        contact bounce: a knock, which must do nothing
    holster on|off       auto-trigger inputs (also: lightbar on|off)
    dock | undock        the dock-detect input
    battery N            set the sim battery to N percent
    status               the device state
    quit                 seal any recording and shut down

The console only touches the simulated hardware (MockFactory pins, the sim battery), so a
person exercises exactly the paths the officer's fingers would. Each reply says what the
device did (``recording ... started``, ``recording refused: storage full``, ``no change``),
and ``SignalWatch`` prints what the officer would see, hear and feel (LEDs, buzzer, haptic
motor) as it happens.
"""

from __future__ import annotations

import json
from typing import Callable

from hw_sim.pins import Finger


class ConsoleError(ValueError):
    """A typed command the console does not understand; the message says what would be."""


class Quit(Exception):
    """The person typed ``quit``."""


class SimConsole:
    """Executes one command line against a ``Device`` built with ``sim=True``."""

    def __init__(self, device) -> None:
        if device.pin_factory is None or not device.sim:
            raise ConsoleError("the console drives simulated hardware only (bodycam device --sim)")
        self.device = device
        controls = device.config.controls
        self.finger = Finger(device.pin_factory, settle_s=controls.bounce_s)
        pins = device.config.pins
        self.buttons = {"record": (pins.record_button, controls.stop_hold_s),
                        "function": (pins.function_button, controls.stealth_hold_s)}
        self.inputs = {"holster": pins.holster, "lightbar": pins.lightbar, "dock": pins.dock_detect}

    def _button(self, words: list[str]) -> tuple[int, float]:
        if len(words) < 2 or words[1] not in self.buttons:
            raise ConsoleError(f"{words[0]}: which button? (record or function)")
        pin, hold_s = self.buttons[words[1]]
        if pin is None:
            raise ConsoleError(f"this device has no {words[1]} button (pins.{words[1]}_button = false)")
        return pin, hold_s

    def _seconds(self, words: list[str], default: float) -> float:
        if len(words) < 3:
            return default
        try:
            seconds = float(words[2])
        except ValueError:
            raise ConsoleError(f"{words[0]}: {words[2]!r} is not a number of seconds") from None
        if not 0 < seconds <= 30:
            raise ConsoleError(f"{words[0]}: seconds must be between 0 and 30")
        return seconds

    def _input(self, name: str, active: bool) -> None:
        pin = self.inputs[name]
        if pin is None:
            raise ConsoleError(f"this device has no {name} input")
        self.finger.set_active(pin, active)

    def execute(self, line: str) -> str:
        """Run one command; returns what the device did. Raises ConsoleError or Quit."""
        machine = self.device.machine
        before = machine.decision_count
        reply = self._execute(line)
        if reply != "ok":
            return reply
        said = machine.decisions_since(before)  # waits for an event still being handled
        return "; ".join(said) if said else "ok (no change)"

    def _execute(self, line: str) -> str:
        words = line.split()
        if not words:
            return ""
        verb = words[0].lower()
        if verb == "press":
            pin, _ = self._button(words)
            self.finger.press(pin, self._seconds(words, 0.12))
        elif verb == "double":
            self.finger.double(self._button(words)[0])
        elif verb == "hold":
            pin, hold_s = self._button(words)
            self.finger.hold(pin, self._seconds(words, hold_s))
        elif verb == "bounce":
            self.finger.bounce(self._button(words)[0])
        elif verb in ("holster", "lightbar"):
            if len(words) != 2 or words[1] not in ("on", "off"):
                raise ConsoleError(f"{verb}: say {verb} on or {verb} off")
            self._input(verb, words[1] == "on")
        elif verb in ("dock", "undock"):
            self._input("dock", verb == "dock")
        elif verb == "battery":
            try:
                percent = float(words[1])
                self.device.battery.set(percent)
            except (IndexError, ValueError):
                raise ConsoleError("battery: give a level from 0 to 100, e.g. battery 5") from None
        elif verb == "status":
            return json.dumps(self.device.status(), sort_keys=True)
        elif verb in ("quit", "exit"):
            raise Quit()
        elif verb == "help":
            return __doc__.split("::", 1)[1].split("\n\n")[1]
        else:
            raise ConsoleError(f"unknown command {verb!r} (type help)")
        return "ok"


def _pattern(method: str, args: tuple, kwargs: dict) -> str:
    if method != "blink":
        return method
    on_s = kwargs.get("on_time", args[0] if args else 1)
    off_s = kwargs.get("off_time", args[1] if len(args) > 1 else 1)
    n = kwargs.get("n", args[4] if len(args) > 4 else None)
    times = "" if n is None else f" x{n}"
    return f"blinking {on_s:g} s on / {off_s:g} s off{times}"


class SignalWatch:
    """Reports every change the firmware makes to the LEDs, buzzer and haptic motor.

    Wraps the gpiozero output devices' ``on``/``off``/``blink`` (what ``firmware.signals``
    calls) so a person at the console sees "red LED on", "buzzer blinking 0.1 s on / 0.1 s
    off x2" when the hardware would do it.
    """

    NAMES = {"green": "green LED", "red": "red LED", "amber": "amber LED", "buzzer": "buzzer", "haptic": "haptic"}

    def __init__(self, signals, say: Callable[[str], None]) -> None:
        self._say = say
        outputs = {**getattr(signals, "_leds", {}), "buzzer": getattr(signals, "_buzzer", None),
                   "haptic": getattr(signals, "_haptic", None)}
        self._last: dict[str, str] = {}
        for name, device in outputs.items():
            if device is not None:
                for method in ("on", "off", "blink"):
                    setattr(device, method, self._wrap(self.NAMES[name], method, getattr(device, method)))

    def _wrap(self, name: str, method: str, original: Callable) -> Callable:
        def changed(*args, **kwargs):
            result = original(*args, **kwargs)
            what = _pattern(method, args, kwargs)
            if self._last.get(name) != what or not name.endswith("LED"):  # a cue is news every time
                self._last[name] = what
                self._say(f"[{name} {what}]")
            return result
        return changed
