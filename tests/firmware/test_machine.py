"""The state machine over the real pipeline: libx264 → PreEventBuffer → Segmenter → sealer → disk.

Frames are fed synchronously (no capture thread), so each test knows exactly which frame
numbers exist when it presses, and the sealed files are decrypted with the agency key to
prove what reached the disk.
"""

import hashlib

import pytest

from buffer.prebuffer import PreEventBuffer
from firmware.machine import DeviceMachine, MachineError, State
from firmware.signals import Signals
from hw_sim.camera import SimCamera
from hw_sim.decode import decode_frame_numbers
from recorder.chunk import decode_chunk
from recorder.encoders import PyAVEncoder
from secure_store import keys
from secure_store.audit import AuditLog, read_entries
from secure_store.audit_verify import verify_audit
from secure_store.format import iter_records, read_header
from secure_store.layout import DeviceRoot
from secure_store.store import EvidenceStore
from secure_store.verify import decrypt_chunks, read_manifest, verify_path

FPS = 10


class Link:
    def __init__(self):
        self.calls = []

    def start(self):
        self.calls.append("start")

    def stop(self):
        self.calls.append("stop")


class Rig:
    """A device without pins or threads: the test is the camera, the finger and the clock."""

    def __init__(self, tmp_path, *, pre_event_s=3.0, segment_s=2.0, quota_bytes=None):
        self.root = DeviceRoot(tmp_path / "device")
        self.device_key = keys.generate("device")
        self.agency_key = keys.generate("agency")
        self.audit = AuditLog(self.root.audit, self.device_key, "SIM-TEST")
        self.store = EvidenceStore(self.root, device_id="SIM-TEST", signing_key=self.device_key,
                                   agency_public_key=self.agency_key.public_key(), audit=self.audit,
                                   quota_bytes=quota_bytes, reserve_bytes=0)
        self.buffer = PreEventBuffer(pre_event_s)
        self.signals = Signals()
        self.link = Link()
        self.now = 0.0
        self.machine = DeviceMachine(buffer=self.buffer, store=self.store, audit=self.audit, signals=self.signals,
                                     segment_s=segment_s, reminder_s=120, dock_link=self.link,
                                     clock=lambda: self.now)
        self.camera = SimCamera(320, 240, FPS)
        self.frames = self.camera.frames()
        self.encoder = PyAVEncoder(self.buffer, 320, 240, FPS, bitrate=300_000)
        self.number = -1  # the newest frame encoded

    def run(self, seconds):
        for _ in range(round(seconds * FPS)):
            self.number, image, timestamp = next(self.frames)
            self.encoder.encode(image, timestamp)
            self.now += 1 / FPS

    def segments(self):
        return sorted(self.root.evidence.glob("*.seg"))

    def recorded_numbers(self):
        """Frame numbers of every sealed segment, decrypted with the agency key, in order."""
        numbers = []
        for seg in self.segments():
            frames = [f for pt in decrypt_chunks(seg, self.agency_key, self.device_key.public_key())
                      for f in decode_chunk(pt)]
            numbers.append(decode_frame_numbers(f.data for f in frames))
        return numbers

    def events(self):
        return [e.event for e in read_entries(self.root.audit)]

    def close(self):
        self.signals.close()


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    r.machine.boot()
    yield r
    r.close()


def test_boot_buffers_and_is_logged(rig):
    assert rig.machine.state is State.BUFFERING
    assert rig.events()[:2] == ["boot", "buffer_start"]
    assert not rig.segments()


def test_activation_puts_the_pre_event_on_disk_at_once(rig):
    rig.run(5.0)
    rig.machine.handle("record", gesture="double")
    assert rig.machine.state is State.RECORDING
    # no further frame has been encoded, yet the held GOPs are sealed and fsync'd already
    records = []
    for seg in rig.segments():  # segment_s = 2 s: the pre-event alone fills more than one
        with open(seg, "rb") as f:
            _, raw = read_header(f)
            records += [r for r in iter_records(f, len(raw)) if not r.meta.final]
    frames_on_disk = sum(r.meta.frame_count for r in records)
    assert frames_on_disk >= 3 * FPS  # ≥ pre_event_s of frames (the newest GOP is still in flight)
    assert records[0].meta.first_ts_us <= rig.camera.timestamp_us(rig.number - 3 * FPS)


def test_recording_is_whole_across_handoff_and_segments(rig):
    rig.run(5.0)
    press = rig.number
    rig.machine.handle("record")
    rig.run(3.0)
    rig.machine.handle("marker", label="suspect ran")
    rig.run(2.6)
    rig.machine.handle("stop")
    assert rig.machine.state is State.BUFFERING
    per_segment = rig.recorded_numbers()
    assert len(per_segment) >= 3  # segment_s = 2 s
    numbers = [n for seg in per_segment for n in seg]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # nothing lost or doubled
    assert numbers[0] <= press - 3 * FPS  # ≥ 3 s pre-event
    assert numbers[-1] == rig.number  # the GOP in flight at stop was sealed too
    markers = [m.label for seg in rig.segments() for m in read_manifest(seg.with_suffix(".manifest")).markers]
    assert markers == ["suspect ran"]
    report = verify_path(rig.root.root, rig.device_key.public_key())
    assert report.ok, report.problems
    events = rig.events()
    assert events.count("record_start") == 1 and "marker" in events and events[-1] == "record_stop"


def test_every_transition_is_audit_logged_and_verifies(rig):
    rig.run(2.0)
    rig.machine.handle("auto", source="holster")
    rig.run(1.5)
    rig.machine.handle("dock")
    rig.run(1.0)
    rig.machine.handle("stop")
    rig.machine.handle("undock")
    entries = read_entries(rig.root.audit)
    moves = [(e.details["from"], e.details["to"]) for e in entries if "to" in e.details]
    assert moves == [("boot", "buffering"), ("buffering", "recording"), ("recording", "docked"),
                     ("docked", "buffering")]
    start = next(e for e in entries if e.event == "record_start")
    assert start.details["trigger"] == "auto:holster"
    assert verify_audit(rig.root.audit, rig.device_key.public_key()) == []


def test_docking_does_not_interrupt_a_recording(rig):
    rig.run(2.0)
    rig.machine.handle("record")
    rig.run(1.0)
    rig.machine.handle("dock")
    assert rig.machine.state is State.RECORDING and rig.machine.docked
    assert rig.link.calls == ["start"]  # offload runs alongside
    rig.run(2.0)
    rig.machine.handle("stop")
    assert rig.machine.state is State.DOCKED
    numbers = [n for seg in rig.recorded_numbers() for n in seg]
    assert numbers == list(range(numbers[0], rig.number + 1))
    rig.machine.handle("undock")
    assert rig.machine.state is State.BUFFERING and rig.link.calls == ["start", "stop"]


def test_battery_low_seals_and_stops_then_refuses(rig):
    rig.run(2.0)
    rig.machine.handle("record")
    rig.run(1.5)
    rig.machine.handle("battery", percent=12)  # low: a warning, recording goes on
    assert rig.machine.state is State.RECORDING
    assert "battery_low" in rig.signals.warnings
    rig.machine.handle("battery", percent=4)  # below the shutdown level: seal and stop
    assert rig.machine.state is State.BUFFERING
    numbers = [n for seg in rig.recorded_numbers() for n in seg]
    assert numbers[-1] == rig.number
    stop = [e for e in read_entries(rig.root.audit) if e.event == "record_stop"][-1]
    assert stop.details["reason"] == "battery_low" and stop.details["sealed"] is True
    rig.machine.handle("record")
    assert rig.machine.state is State.BUFFERING
    assert rig.events()[-1] == "record_refused"


def test_storage_full_stops_and_refuses_without_touching_evidence(tmp_path):
    rig = Rig(tmp_path, quota_bytes=700_000)
    try:
        rig.machine.boot()
        rig.run(2.0)
        rig.machine.handle("record")
        for _ in range(40):  # until the sealer runs out of room
            rig.run(1.0)
            rig.machine.tick()
            if rig.machine.state is not State.RECORDING:
                break
        rig.signals.wait_idle()
        assert rig.machine.state is State.BUFFERING
        assert rig.machine.storage_level == "full" and "storage_full" in rig.signals.warnings
        stop = [e for e in read_entries(rig.root.audit) if e.event == "record_stop"][-1]
        assert stop.details["reason"] == "storage_full"
        assert verify_path(rig.root.root, rig.device_key.public_key()).ok
        before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in rig.root.evidence.iterdir()}
        rig.machine.handle("record")  # refused, and nothing is deleted to make room
        rig.run(1.0)
        rig.machine.tick()
        after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in rig.root.evidence.iterdir()}
        assert rig.machine.state is State.BUFFERING and after == before
        assert "record_refused" in rig.events()
    finally:
        rig.close()


def test_stealth_toggles_signals_only(rig):
    rig.run(1.0)
    rig.machine.handle("record")
    rig.machine.handle("stealth")
    assert rig.signals.stealth and rig.machine.state is State.RECORDING
    rig.run(1.5)
    rig.machine.handle("stealth")
    assert not rig.signals.stealth
    rig.machine.handle("stop")
    assert [e for e in rig.events() if e.startswith("stealth")] == ["stealth_on", "stealth_off"]


def test_update_refused_while_recording(rig):
    rig.run(1.0)
    rig.machine.handle("record")
    with pytest.raises(MachineError, match="recording"):
        rig.machine.begin_update()
    rig.machine.handle("stop")
    rig.machine.begin_update()
    assert rig.machine.state is State.UPDATING
    rig.machine.handle("record")  # no recording while the slots are being written
    assert rig.machine.state is State.UPDATING
    rig.machine.end_update(ok=True)
    assert rig.machine.state is State.BUFFERING


def test_reminder_every_interval_while_recording(rig, mocker):
    cue = mocker.spy(rig.signals, "cue")
    rig.run(1.0)
    rig.machine.handle("record")
    for _ in range(3):
        rig.now += 60
        rig.machine.tick()
    assert [c.args[0] for c in cue.call_args_list].count("reminder") == 1
    rig.now += 60
    rig.machine.tick()
    assert [c.args[0] for c in cue.call_args_list].count("reminder") == 2
    rig.machine.handle("stop")


def test_clock_not_set_warns_until_the_dock_sets_it(tmp_path, mocker):
    rig = Rig(tmp_path)
    cue = mocker.spy(rig.signals, "cue")
    try:
        rig.machine.boot(clock_set=False)
        assert "clock_not_set" in rig.signals.warnings and ("clock_not_set",) in [c.args for c in cue.call_args_list]
        rig.machine.handle("clock_set", offset_us=1234)
        assert "clock_not_set" not in rig.signals.warnings
    finally:
        rig.close()


def test_unknown_event_is_a_programming_error(rig):
    with pytest.raises(MachineError, match="unknown event"):
        rig.machine.handle("teleport")
