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
person exercises exactly the paths the officer's fingers would.
"""

from __future__ import annotations

import json

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
        """Run one command; returns what to show. Raises ConsoleError or Quit."""
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
