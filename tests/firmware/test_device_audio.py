"""The simulated device with sound, end to end: MockFactory presses (record, the mute gesture)
→ sealed store → export → the MP4's audio track, its muted span and the signed audit events."""

import json

import av
import pytest

from export.exporter import export_evidence
from firmware.config import Config, with_overrides
from firmware.device import Device
from firmware.machine import State
from hw_sim.pins import Finger
from recorder.audio import MUTE_MARKER, UNMUTE_MARKER
from secure_store import keys
from secure_store.audit import read_entries

FPS = 10


@pytest.fixture
def provisioned(provision_sim_device):
    return provision_sim_device("SIM-AUDIO")


def test_sim_device_records_sound_keeps_pre_event_sound_by_policy_and_logs_the_mute(provisioned, tmp_path):
    root, made = provisioned
    config = with_overrides(
        Config(),
        video={"resolution": "320x240", "fps": FPS, "pre_event_s": 3.0, "segment_s": 2.0, "bitrate": 300_000},
        audio={"pre_event": True, "bitrate": 48_000},
        controls={"stop_hold_s": 0.5},
        storage={"reserve_mb": 0},
    )
    pins = config.pins
    device = Device(root, config, sim=True, camera_clock="fast")
    finger = Finger(device.pin_factory, config.controls.bounce_s)
    try:
        device.start()
        device.wait_for(lambda: device.sensor_seconds >= 5, 60, "pre-event")
        finger.double(pins.record_button)
        device.wait_for(lambda: device.machine.state is State.RECORDING, 5, "recording")
        press_us = device.recording_started_us
        device.wait_for(lambda: device.sensor_seconds >= press_us / 1e6 + 2, 60, "some sound")
        finger.double(pins.function_button)  # mute (its first press is a marker)
        device.wait_for(lambda: device.machine.sound.muted, 5, "mute")
        muted_at = device.sensor_seconds
        device.wait_for(lambda: device.sensor_seconds >= muted_at + 2, 60, "a muted stretch")
        finger.double(pins.function_button)  # sound back on
        device.wait_for(lambda: not device.machine.sound.muted, 5, "unmute")
        unmuted_at = device.sensor_seconds
        device.wait_for(lambda: device.sensor_seconds >= unmuted_at + 2, 60, "sound again")
        finger.hold(pins.record_button, 0.7)
        device.wait_for(lambda: device.machine.state is State.BUFFERING, 5, "stop")
    finally:
        device.stop()

    entries = read_entries(root / "audit")
    muted = [e for e in entries if e.event == "audio_muted"]
    unmuted = [e for e in entries if e.event == "audio_unmuted"]
    assert len(muted) == len(unmuted) == 1
    start_us, end_us = muted[0].details["sensor_us"], unmuted[0].details["sensor_us"]
    assert press_us < start_us < end_us

    agency = keys.load_private_key(made["agency"], "agency")
    result = export_evidence(root / "evidence", agency, tmp_path / "out",
                             device_key=keys.load_public_key(root / "keys" / "device.pub", "device"))
    (recording,) = result.recordings
    report = json.loads(recording.report.read_text())
    assert [(m["label"], m["timestamp_us"]) for m in report["markers"] if m["label"] != "officer marker"] == [
        (MUTE_MARKER, start_us), (UNMUTE_MARKER, end_us)]
    (span,) = report["muted_spans"]
    assert (span["from_timestamp_us"], span["to_timestamp_us"], span["until_end"]) == (start_us, end_us, False)

    first_us = report["segments"][0]["first_timestamp_us"]
    with av.open(str(recording.mp4)) as mp4:
        stream = mp4.streams.audio[0]
        heard = [round(float(p.pts * p.time_base) * 1e6) + first_us for p in mp4.demux(stream) if p.size]
    assert heard[0] < press_us - 1_000_000  # pre_event = true: the seconds before the press have sound
    # Nothing heard while muted (the MP4 keeps audio time in samples: 21 µs is one sample).
    assert not [t for t in heard if start_us <= t < end_us - 21]
    assert [t for t in heard if t >= end_us] and report["mp4"]["audio"]["packets"] == len(heard)
