"""The device's sound as the state machine sees it: on, muted or off, and the officer's mute.

A mute (the function button pressed twice, see firmware/controls.py) drops everything the
microphone hears from the newest frame on (``recorder.audio.MuteGate``), and says so three
ways, so a court sees the silence was chosen and when: a signed audit event
(``audio_muted`` / ``audio_unmuted``, with the sensor time), a marker in the recording's
manifest at that time, and a cue to the officer. Stealth does not mute: it only silences the
device's own LEDs, buzzer and motor.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from recorder.audio import MUTE_MARKER, UNMUTE_MARKER

log = logging.getLogger(__name__)

AUDIO_MUTED, AUDIO_UNMUTED = "audio_muted", "audio_unmuted"  # audit events of ours


class AudioMute(Protocol):
    """What mutes the sound (``recorder.audio.MuteGate``): returns the sensor time it takes effect."""

    def mute(self) -> int: ...
    def unmute(self) -> int: ...


class Sound:
    """Sound on, muted, or off (``gate`` None: the configuration records no sound)."""

    def __init__(self, gate: AudioMute | None, audit: Any, signals: Any, *, pre_event: bool = False) -> None:
        self.gate, self.audit, self.signals = gate, audit, signals
        self.pre_event = pre_event
        self.muted = False

    @property
    def state(self) -> str:
        return "off" if self.gate is None else ("muted" if self.muted else "on")

    def policy(self) -> dict[str, Any]:
        """What the record_start entry says of sound: a silent pre-event is policy, not a fault."""
        if self.gate is None:
            return {"audio": "off"}
        return {"audio": self.state, "pre_event_audio": self.pre_event}

    def begin(self, segmenter: Any) -> None:
        """A recording starts: if muted already, its manifest says so from its first frame."""
        if self.muted:
            segmenter.add_marker(MUTE_MARKER)

    def toggle(self, recording: Any, state: str) -> None:
        """Mute or unmute at the newest frame; audit event, marker (when recording), cue."""
        if self.gate is None:
            log.info("mute ignored: audio is off in the configuration")
            return
        self.muted = not self.muted
        at_us = self.gate.mute() if self.muted else self.gate.unmute()
        if recording is not None:
            label, segmenter = (MUTE_MARKER if self.muted else UNMUTE_MARKER), recording.segmenter
            recording.output.call(lambda: segmenter.add_marker(label, at_us))  # after the frames seen so far
        self.audit.append(AUDIO_MUTED if self.muted else AUDIO_UNMUTED, sensor_us=at_us, state=state,
                          recording_id=recording.recording_id if recording else None)
        self.signals.cue("mute" if self.muted else "unmute")
