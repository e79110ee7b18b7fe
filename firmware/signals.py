"""What the officer sees, hears and feels: LED lights, buzzer and haptic cues.

Three kinds of signal, each a small table so the README table and the code agree:

* a **light** shows the device state (green blinking = buffering, red = recording);
* a **warning** lights the amber LED, in the pattern of the most urgent warning;
* a **cue** is played once on the buzzer and the haptic motor (start = 2 beeps + 2
  vibrations, stop = 1 long, ...). Cues play one after another on a small player
  thread, so a warning never cuts a start cue short.

Stealth silences LEDs, sound and vibration, and nothing else: the state machine, the
recording and the audit log go on exactly as before. Any part may be absent (``None``).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Blink:
    """on_time, off_time and count (None: forever); ``Blink(solid=True)`` is steady on."""

    on_s: float = 0.0
    off_s: float = 0.0
    n: int | None = None
    solid: bool = False

    @property
    def duration_s(self) -> float:
        return 0.0 if self.n is None else self.n * (self.on_s + self.off_s)


SOLID = Blink(solid=True)


@dataclass(frozen=True)
class Cue:
    """One acknowledgement: ``beep`` on the buzzer and ``buzz`` on the haptic motor, together."""

    beep: Blink | None
    buzz: Blink | None

    @property
    def duration_s(self) -> float:
        return max((b.duration_s for b in (self.beep, self.buzz) if b), default=0.0)


# state light: (LED name, pattern)
LIGHTS: dict[str, tuple[str, Blink] | None] = {
    "boot": ("green", SOLID),
    "buffering": ("green", Blink(0.1, 1.9)),
    "recording": ("red", SOLID),
    "docked": ("green", SOLID),
    "updating": ("green", Blink(0.5, 0.5)),
    "fault": ("red", Blink(0.1, 0.1)),
    "off": None,
}

# amber warnings, most urgent first
WARNINGS: dict[str, Blink] = {
    "storage_full": Blink(0.1, 0.1),
    "battery_low": Blink(0.5, 0.5),
    "storage_nearly_full": SOLID,
    "clock_not_set": Blink(0.1, 0.9),
}

CUES: dict[str, Cue] = {
    "start": Cue(beep=Blink(0.1, 0.1, 2), buzz=Blink(0.2, 0.1, 2)),
    "stop": Cue(beep=Blink(1.0, 0.0, 1), buzz=Blink(1.0, 0.0, 1)),
    "reminder": Cue(beep=Blink(0.05, 0.0, 1), buzz=Blink(0.15, 0.0, 1)),
    "marker": Cue(beep=None, buzz=Blink(0.1, 0.0, 1)),
    "mute": Cue(beep=Blink(0.05, 0.1, 2), buzz=Blink(0.1, 0.1, 3)),
    "unmute": Cue(beep=Blink(0.3, 0.0, 1), buzz=Blink(0.3, 0.0, 1)),
    "storage_nearly_full": Cue(beep=Blink(0.3, 0.2, 3), buzz=None),
    "storage_full": Cue(beep=Blink(0.1, 0.1, 5), buzz=Blink(0.5, 0.2, 2)),
    "battery_low": Cue(beep=Blink(0.5, 0.5, 2), buzz=None),
    "clock_not_set": Cue(beep=Blink(0.05, 0.3, 3), buzz=None),
}


def _drive(device, pattern: Blink | None) -> None:
    """Set one gpiozero output to a pattern (LED, Buzzer and PWMOutputDevice all blink)."""
    if device is None:
        return
    if pattern is None:
        device.off()
    elif pattern.solid:
        device.on()
    else:
        device.blink(on_time=pattern.on_s, off_time=pattern.off_s, n=pattern.n, background=True)


class Signals:
    """The device's LEDs, buzzer and haptic motor, driven by name from the tables above."""

    def __init__(self, *, green=None, red=None, amber=None, buzzer=None, haptic=None, stealth: bool = False):
        self._leds = {"green": green, "red": red, "amber": amber}
        self._buzzer = buzzer
        self._haptic = haptic
        self._lock = threading.RLock()
        self._light = "off"
        self._warnings: frozenset[str] = frozenset()
        self._stealth = stealth
        self._cues: queue.Queue[str | None] = queue.Queue()
        self._gap = threading.Event()  # set only by close(): a sleep that closing cuts short
        self._player = threading.Thread(target=self._play_cues, name="signals-cues", daemon=True)
        self._player.start()

    # -- state light and warnings -------------------------------------------------
    @property
    def light(self) -> str:
        return self._light

    def show(self, light: str) -> None:
        """Show a device state on the status LEDs (one of ``LIGHTS``)."""
        if light not in LIGHTS:
            raise ValueError(f"unknown light {light!r}")
        with self._lock:
            self._light = light
            self._render_light()

    @property
    def warnings(self) -> frozenset[str]:
        return self._warnings

    def warn(self, warnings: Iterable[str]) -> None:
        """Set the active warnings; the amber LED shows the most urgent one."""
        new = frozenset(warnings)
        unknown = new - set(WARNINGS)
        if unknown:
            raise ValueError(f"unknown warning {sorted(unknown)[0]!r}")
        with self._lock:
            self._warnings = new
            self._render_warning()

    def _render_light(self) -> None:
        entry = None if self._stealth else LIGHTS[self._light]
        for name in ("green", "red"):
            _drive(self._leds[name], entry[1] if entry and entry[0] == name else None)

    def _render_warning(self) -> None:
        top = next((w for w in WARNINGS if w in self._warnings), None)
        _drive(self._leds["amber"], None if self._stealth or top is None else WARNINGS[top])

    # -- cues ---------------------------------------------------------------------
    def cue(self, name: str) -> None:
        """Queue a sound-and-vibration cue (one of ``CUES``); dropped in stealth."""
        if name not in CUES:
            raise ValueError(f"unknown cue {name!r}")
        if not self._stealth:
            self._cues.put(name)

    def _play_cues(self) -> None:
        while True:
            name = self._cues.get()
            try:
                if name is None:
                    return
                cue = CUES[name]
                with self._lock:
                    if self._stealth:
                        continue
                    _drive(self._buzzer, cue.beep)
                    _drive(self._haptic, cue.buzz)
                self._gap.wait(cue.duration_s + 0.05)  # a short gap so two cues stay two
                for device in (self._buzzer, self._haptic):
                    self._finish(device)  # a loaded machine runs a blink late: a cue has played when it ends
            finally:
                self._cues.task_done()

    def _finish(self, device) -> None:
        """Wait until ``device``'s background blink (gpiozero's own thread) has ended, unless closing."""
        thread = getattr(device, "_blink_thread", None)  # what gpiozero's blink(background=False) joins
        while thread is not None and thread.is_alive() and not self._gap.is_set():
            thread.join(0.05)

    def wait_idle(self) -> None:
        """Block until every queued cue has played (tests and the demo use it)."""
        self._cues.join()

    # -- stealth ------------------------------------------------------------------
    @property
    def stealth(self) -> bool:
        return self._stealth

    @stealth.setter
    def stealth(self, on: bool) -> None:
        with self._lock:
            self._stealth = bool(on)
            if self._stealth:
                _drive(self._buzzer, None)
                _drive(self._haptic, None)
            self._render_light()
            self._render_warning()

    def close(self) -> None:
        """Stop the cue player and turn everything off."""
        self._gap.set()
        self._cues.put(None)
        self._player.join(timeout=2)
        for device in (*self._leds.values(), self._buzzer, self._haptic):
            if device is not None:
                device.close()
