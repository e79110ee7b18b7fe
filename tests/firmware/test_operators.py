"""What operators read: dock status, the per-pull recordings list, config show, the sample config,
the console's LED/buzzer/haptic lines, and a demo that records exactly what it says."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from firmware.cli import main
from firmware.config import Config, from_mapping, with_overrides
from firmware.console import SignalWatch, SimConsole
from firmware.demo import run_demo
from firmware.device import Device
from firmware.machine import State
from firmware.provision import provision
from hw_sim.link import LinkedPtys
from secure_store import keys

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def provisioned(tmp_path):
    made = {}
    for kind in ("agency", "vendor", "dock"):
        made[kind], made[kind + "_pub"] = keys.write_keypair(kind, tmp_path / kind)
    root = tmp_path / "device"
    provision(root, "SIM-OPS", made["agency_pub"], made["vendor_pub"], [made["dock_pub"]])
    return root, made


def sim_config() -> Config:
    return with_overrides(Config(), video={"resolution": "320x240", "fps": 10, "pre_event_s": 3.0, "segment_s": 2.0,
                                           "bitrate": 300_000},
                          controls={"stop_hold_s": 0.5, "stealth_hold_s": 0.5}, storage={"reserve_mb": 0})


def test_dock_status_and_the_pull_summary_list_what_the_camera_holds(provisioned, tmp_path, capsys):
    root, made = provisioned
    with LinkedPtys() as cable:
        device = Device(root, sim_config(), sim=True, camera_clock="stepped", port=cable.a_path)
        gate = device.sensor_gate
        try:
            device.start()
            gate.allow_until(4.0)
            device.wait_sensor(4.0, "pre-event")
            device.machine.handle("record", gesture="double")
            gate.allow_until(6.0)
            device.wait_sensor(6.0, "recording")
            device.machine.handle("marker", label="suspect left")
            gate.allow_until(9.0)
            device.wait_sensor(9.0, "recording")
            device.machine.handle("stop", gesture="hold")
            recording_id = device.machine.last_recording.recording_id
            device.machine.handle("dock")

            capsys.readouterr()
            assert main(["dock", "status", "--port", cable.b_path, "--dock-key", str(made["dock"])]) == 0
            status = capsys.readouterr().out
            assert "SIM-OPS" in status and "battery" in status and re.search(r"storage\s+ok: [\d.]+ MiB free", status)
            assert re.search(r"clock\s+20\d\d-", status) and re.search(r"queued\s+[1-9]\d* segments", status)

            code = main(["dock", "pull", "--port", cable.b_path, "--out", str(tmp_path / "dock"),
                         "--dock-key", str(made["dock"]), "--no-progress"])
            out = capsys.readouterr().out
            assert main(["dock", "status", "--port", cable.b_path, "--dock-key", str(made["dock"])]) == 0
            after = capsys.readouterr().out
        finally:
            device.stop()
    assert code == 0
    [line] = [x for x in out.splitlines() if x.strip().startswith("recording ")]
    assert recording_id in line and "trigger button:double" in line and "stopped by button:hold" in line
    assert "markers: suspect left" in line
    duration = float(re.search(r"\(([\d.]+) s, (\d+) segments\)", line).group(1))
    assert 7.5 <= duration <= 8.5  # 3 s of pre-event and 5 s after the press, by the frames' own times
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC -> \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", line)
    assert re.search(r"queued\s+[1-9]\d* segments", out)  # at docking
    assert re.search(r"queued\s+0 segments", after)  # all confirmed and released


def test_sample_config_loads_and_equals_the_defaults():
    sample = REPO / "docs" / "bodycam.sample.toml"
    assert from_mapping(tomllib.loads(sample.read_text())) == Config()


def test_config_show_prints_the_effective_settings(tmp_path, capsys):
    path = tmp_path / "config.toml"
    path.write_text('[video]\nfps = 25\n[pins]\nlightbar = false\n')
    assert main(["config", "show", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    shown = from_mapping(tomllib.loads(out))
    assert shown.video.fps == 25 and shown.pins.lightbar is None and shown.video.bitrate == Config().video.bitrate
    assert main(["config", "show"]) == 0
    assert from_mapping(tomllib.loads(capsys.readouterr().out)) == Config()


def test_console_shows_signal_changes_as_they_happen(provisioned):
    root, _ = provisioned
    device = Device(root, sim_config(), sim=True, camera_clock="stepped")
    seen: list[str] = []
    SignalWatch(device.signals, seen.append)
    console = SimConsole(device)
    try:
        device.start()
        device.sensor_gate.allow_until(2.0)
        device.wait_sensor(2.0, "video")
        reply = console.execute("double record")
        assert re.fullmatch(r"recording \S+ started", reply)
        device.signals.wait_idle()
        assert "[red LED on]" in seen and "[green LED off]" in seen
        assert "[buzzer blinking 0.1 s on / 0.1 s off x2]" in seen  # the start cue: two beeps
        assert "[haptic blinking 0.2 s on / 0.1 s off x2]" in seen
        seen.clear()
        assert console.execute("double record").startswith("already recording")
        reply = console.execute("hold record")
        assert reply.startswith("recording ") and reply.endswith("stopped (button:hold), sealed")
        device.signals.wait_idle()
        assert "[red LED off]" in seen and "[buzzer blinking 1 s on / 0 s off x1]" in seen
        assert device.machine.state is State.BUFFERING
    finally:
        device.stop()


def test_demo_records_exactly_what_it_says(tmp_path):
    """Driven by the sensor clock: 30 s before the press and 20 s after it, however busy the machine."""
    lines: list[str] = []
    summary = run_demo(tmp_path / "demo", resolution="320x240", fps=10, bitrate=300_000, say=lines.append)
    assert summary.verified and not summary.problems
    assert summary.recorded_s == pytest.approx(20.0, abs=1e-6)
    assert summary.pre_event_s == pytest.approx(30.0, abs=0.1)
    assert summary.markers == ["officer marker"] and summary.confirmed == summary.segments
    assert any("marker" in line and "sensor 45.0 s" in line for line in lines)
