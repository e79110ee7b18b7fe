"""Fixed examples for device-side guards no other test would miss if they went:

- the daemon writes ``state/recording`` while it records (the firmware installer's only
  way to know not to swap slots under a recording) and removes it when the recording ends;
- stealth cuts a cue that is already sounding, not only the cues queued after it.
"""

from __future__ import annotations

import time

import pytest
from gpiozero import Buzzer, PWMOutputDevice

from firmware import update
from firmware.config import Config, with_overrides
from firmware.console import SimConsole
from firmware.device import Device
from firmware.machine import State
from firmware.provision import provision
from firmware.signals import Signals
from firmware.update import UpdateRefused
from firmware.update import image as fwimage
from hw_sim.pins import sim_pin_factory
from secure_store import keys


def _wait(condition, what: str, timeout: float = 30.0) -> None:
    """Poll a condition (never a fixed sleep); the timeout only turns a hang into a failure."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_daemon_flags_a_recording_so_no_firmware_is_installed_under_it(tmp_path):
    made = {}
    for kind in ("agency", "vendor", "dock"):
        made[kind], made[kind + "_pub"] = keys.write_keypair(kind, tmp_path / kind)
    root = tmp_path / "device"
    provision(root, "SIM-FLAG", made["agency_pub"], made["vendor_pub"], [made["dock_pub"]])
    src = tmp_path / "src"
    src.mkdir()
    (src / "v").write_bytes(b"new")
    image = tmp_path / "fw.img"
    fwimage.build_image(src, "9.0.0", keys.load_private_key(made["vendor"], "vendor"), image)
    config = with_overrides(Config(), video={"resolution": "320x240", "fps": 10, "pre_event_s": 2.0,
                                             "segment_s": 4.0, "bitrate": 300_000},
                            controls={"stop_hold_s": 0.5, "stealth_hold_s": 0.5}, storage={"reserve_mb": 0})
    device = Device(root, config, sim=True, camera_clock="fast")
    console = SimConsole(device)
    flag = root / "state" / "recording"
    try:
        device.start()
        device.wait_for(lambda: device.sensor_seconds >= 1, 30, "video")
        assert not flag.exists()
        console.execute("double record")
        device.wait_for(lambda: device.machine.state is State.RECORDING, 10, "recording")
        recording_id = device.machine.recording.recording_id
        _wait(flag.exists, "state/recording")
        assert flag.read_text() == recording_id + "\n"
        with pytest.raises(UpdateRefused, match="record"):
            update.install_image(image, root)
        console.execute("hold record")
        device.wait_for(lambda: device.machine.state is State.BUFFERING, 10, "stop")
        _wait(lambda: not flag.exists(), "state/recording to go")
    finally:
        device.stop()
    assert update.status(root)["active"] == "a"      # nothing was installed under the recording


def test_stealth_cuts_a_cue_that_is_already_sounding():
    factory = sim_pin_factory()
    buzzer, haptic = Buzzer(19, pin_factory=factory), PWMOutputDevice(12, pin_factory=factory)
    signals = Signals(buzzer=buzzer, haptic=haptic)
    beep, buzz = factory.pin(19), factory.pin(12)
    try:
        signals.cue("stop")                      # one long (1 s) beep and vibration
        _wait(lambda: any(s.state for s in beep.states) and any(s.state for s in buzz.states),
              "the stop cue to sound")
        signals.stealth = True
        assert (beep.state, buzz.state) == (0, 0)   # silent at once, not at the end of the cue
        beep.clear_states()
        buzz.clear_states()
        signals.cue("start")                     # dropped in stealth
        signals.wait_idle()                      # the stop cue's time on the player has run out
        assert all(not s.state for s in beep.states) and all(not s.state for s in buzz.states)
    finally:
        signals.close()
