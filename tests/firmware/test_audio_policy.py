"""Sound policy on the device: [audio] settings, the mute gesture, and mute in the state machine.

The machine runs over the real pipeline (sim camera + sim microphone → libx264 + AAC → mute
gate → pre-event buffer → segmenter → sealer); sealed chunks are decrypted with the agency key
to prove what reached the disk.
"""

import pytest

from buffer.prebuffer import PreEventBuffer
from firmware.config import Config, ConfigError, from_mapping, with_overrides
from firmware.controls import Controls
from firmware.machine import DeviceMachine
from firmware.signals import CUES, Signals
from hw_sim.camera import SimCamera
from hw_sim.microphone import SimMicrophone
from recorder.audio import MUTE_MARKER, UNMUTE_MARKER, AacEncoder, AudioCapture, MuteGate
from recorder.chunk import decode_chunk
from recorder.encoders import PyAVEncoder
from secure_store import keys
from secure_store.audit import AuditLog, read_entries
from secure_store.layout import DeviceRoot
from secure_store.store import EvidenceStore
from secure_store.verify import decrypt_chunks, read_manifest

FPS = 10


def test_audio_settings_default_and_validation():
    assert Config().audio.enabled is True and Config().audio.pre_event is False
    assert Config().audio.bitrate == 64_000
    cfg = from_mapping({"audio": {"enabled": True, "pre_event": True, "bitrate": 96_000}})
    assert (cfg.audio.pre_event, cfg.audio.bitrate) == (True, 96_000)
    for bad, words in [({"pre_event": "yes"}, "audio.pre_event"), ({"bitrate": 8000}, "audio.bitrate"),
                       ({"volume": 3}, "unknown key audio.volume")]:
        with pytest.raises(ConfigError, match=words):
            from_mapping({"audio": bad})


class Cues(Signals):
    def __init__(self):
        super().__init__()
        self.played = []

    def cue(self, name):
        self.played.append(name)
        super().cue(name)


class Rig:
    """A device without pins or threads: the test is the camera, the microphone and the finger."""

    def __init__(self, tmp_path, *, audio=True, hold_audio=False):
        self.root = DeviceRoot(tmp_path / "device")
        self.device_key, self.agency_key = keys.generate("device"), keys.generate("agency")
        self.audit = AuditLog(self.root.audit, self.device_key, "SIM-AUDIO")
        self.store = EvidenceStore(self.root, device_id="SIM-AUDIO", signing_key=self.device_key,
                                   agency_public_key=self.agency_key.public_key(), audit=self.audit,
                                   reserve_bytes=0)
        self.buffer = PreEventBuffer(2.0, hold_audio=hold_audio)
        self.newest = None
        rig = self

        class Tap:
            def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
                rig.buffer.outputframe(frame, keyframe, timestamp, packet, audio)
                if not audio:
                    rig.newest = timestamp

        self.gate = MuteGate(Tap(), lambda: self.newest) if audio else None
        front = self.gate or Tap()
        self.signals = Cues()
        self.machine = DeviceMachine(buffer=self.buffer, store=self.store, audit=self.audit, signals=self.signals,
                                     segment_s=2.0, audio=self.gate)
        self.camera = SimCamera(256, 144, FPS).frames()
        self.video = PyAVEncoder(front, 256, 144, FPS, bitrate=200_000)
        self.sound = AudioCapture(SimMicrophone(), AacEncoder(front)) if audio else None
        self.machine.boot()

    def run(self, seconds):
        for _ in range(round(seconds * FPS)):
            _, image, ts = next(self.camera)
            if self.sound:
                self.sound.until(ts)
            self.video.encode(image, ts)

    def sealed(self):
        """(frames, markers) of every sealed segment, in order."""
        frames, markers = [], []
        for seg in sorted(self.root.evidence.glob("*.seg")):
            frames += [f for pt in decrypt_chunks(seg, self.agency_key, self.device_key.public_key())
                       for f in decode_chunk(pt)]
            markers += [(m.timestamp_us, m.label) for m in read_manifest(seg.with_suffix(".manifest")).markers]
        return frames, markers

    def entries(self, *names):
        return [e for e in read_entries(self.root.audit) if e.event in names]


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.signals.close()


def test_mute_while_recording_is_silent_signed_marked_and_cued(rig):
    rig.run(3.0)
    rig.machine.handle("record", gesture="double")
    rig.run(2.0)
    rig.machine.handle("mute")
    assert rig.machine.status()["audio"] == "muted"
    rig.run(2.0)
    rig.machine.handle("mute")
    rig.run(2.0)
    rig.machine.handle("stop", gesture="hold")
    muted, unmuted = rig.entries("audio_muted", "audio_unmuted")
    assert (muted.event, unmuted.event) == ("audio_muted", "audio_unmuted")
    start, end = muted.details["sensor_us"], unmuted.details["sensor_us"]
    assert end - start == pytest.approx(2_000_000, abs=1_000_000 // FPS)
    assert muted.details["recording_id"] == rig.machine.last_recording.recording_id
    frames, markers = rig.sealed()
    assert markers == [(start, MUTE_MARKER), (end, UNMUTE_MARKER)]
    heard = [f.timestamp_us for f in frames if f.audio]
    assert not [t for t in heard if start <= t < end]  # nothing heard while muted reached the disk
    assert [t for t in heard if t < start] and [t for t in heard if t >= end]
    assert "mute" in rig.signals.played and "unmute" in rig.signals.played
    (start_entry,) = rig.entries("record_start")
    assert (start_entry.details["audio"], start_entry.details["pre_event_audio"]) == ("on", False)
    assert set(CUES) >= {"mute", "unmute"}


def test_muted_before_the_press_the_recording_starts_muted(rig):
    rig.run(1.0)
    rig.machine.handle("mute")
    rig.run(2.0)
    rig.machine.handle("record", gesture="double")
    rig.run(1.0)
    rig.machine.handle("stop", gesture="hold")
    frames, markers = rig.sealed()
    assert not [f for f in frames if f.audio]
    first_video = next(f.timestamp_us for f in frames if not f.audio)
    assert markers == [(first_video, MUTE_MARKER)]


def test_stealth_does_not_mute(rig):
    rig.run(2.0)
    rig.machine.handle("stealth")
    rig.machine.handle("record", gesture="double")
    rig.run(2.0)
    rig.machine.handle("stop", gesture="hold")
    assert rig.machine.stealth and not rig.machine.sound.muted
    frames, _ = rig.sealed()
    assert len([f for f in frames if f.audio]) >= 1.5 * 48_000 / 1024
    assert not rig.entries("audio_muted")


def test_with_audio_off_mute_changes_nothing(tmp_path):
    rig = Rig(tmp_path, audio=False)
    try:
        rig.run(1.0)
        rig.machine.handle("mute")
        assert rig.machine.status()["audio"] == "off" and not rig.entries("audio_muted")
    finally:
        rig.signals.close()


def test_function_double_press_is_mute_after_a_marker(pin_factory, manual_clock, stepped_finger):
    cfg = with_overrides(Config(), controls={"stealth_hold_s": 0.4, "double_press_s": 1.0, "bounce_s": 0.03})
    events = []
    controls = Controls(cfg.pins, cfg.controls, lambda name, **d: events.append(name),
                        pin_factory=pin_factory, clock=manual_clock)
    try:
        stepped_finger.double(cfg.pins.function_button)  # the clock is stepped: events are in by now
        assert events == ["marker", "mute"]
    finally:
        controls.close()
