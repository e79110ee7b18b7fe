"""The simulated device end to end: MockFactory presses → sealed store → dock pull over a
pty pair → export with the agency key → frame numbers read back from the MP4's pixels."""

import json
import time

import av
import pytest

from dock.client import pull
from export.exporter import export_evidence
from firmware.config import Config, with_overrides
from firmware.console import ConsoleError, Quit, SimConsole
from firmware.device import Device
from firmware.machine import State
from firmware.provision import ProvisionError, provision
from hw_sim.camera import read_frame_number
from hw_sim.link import LinkedPtys
from hw_sim.pins import Finger
from secure_store import keys
from secure_store.audit import read_entries

FPS = 10
PRE_EVENT_S = 30.0
HANG_S = 300.0  # waits end on the event they wait for; this only catches a hung device, never a busy machine


def mp4_frame_numbers(path):
    with av.open(str(path)) as container:
        return [read_frame_number(frame.to_ndarray(format="gray")) for frame in container.decode(video=0)]


@pytest.fixture
def provisioned(provision_sim_device):
    return provision_sim_device("SIM-E2E")


def sim_config(**controls):
    return with_overrides(
        Config(),
        video={"resolution": "320x240", "fps": FPS, "pre_event_s": PRE_EVENT_S, "segment_s": 4.0,
               "bitrate": 300_000},
        controls={"stop_hold_s": 0.5, "stealth_hold_s": 0.5, **controls},
        storage={"reserve_mb": 0},
    )


def test_sim_device_records_pre_event_and_every_frame_to_the_export(provisioned, tmp_path):
    root, made = provisioned
    config = sim_config()
    pins = config.pins
    with LinkedPtys() as cable:
        device = Device(root, config, sim=True, port=cable.a_path, camera_clock="stepped")
        finger = Finger(device.pin_factory, config.controls.bounce_s)
        try:
            device.start()
            device.sensor_gate.allow_until(PRE_EVENT_S + 3)  # the camera waits while the finger works
            device.wait_sensor(PRE_EVENT_S + 3, "pre-event", stall_s=HANG_S)
            finger.bounce(pins.record_button)  # a knock first: nothing happens
            assert device.machine.state is State.BUFFERING
            finger.double(pins.record_button)
            device.wait_for(lambda: device.machine.state is State.RECORDING, HANG_S, "recording")
            press_frame = round(device.recording_started_us * FPS / 1e6)
            device.sensor_gate.allow_until(press_frame / FPS + 6)
            device.wait_sensor(press_frame / FPS + 6, "marker moment", stall_s=HANG_S)
            finger.press(pins.function_button)
            finger.hold(pins.record_button, 0.5)
            device.wait_for(lambda: device.machine.state is State.BUFFERING, HANG_S, "stop")
            recording_id = device.machine.last_recording.recording_id
            finger.set_active(pins.dock_detect, True)
            device.wait_for(lambda: device.machine.state is State.DOCKED, HANG_S, "dock")
            pulled = pull(cable.b_path, tmp_path / "dock", keys.load_private_key(made["dock"], "dock"))
            assert pulled.ok, pulled.problems
            assert pulled.confirmed and not list((root / "evidence").glob("*.seg"))  # released after verification
        finally:
            device.stop()

    result = export_evidence(tmp_path / "dock" / "SIM-E2E", keys.load_private_key(made["agency"], "agency"),
                             tmp_path / "export", keys.load_public_key(root / "keys" / "device.pub", "device"))
    assert result.verification.ok
    [recording] = result.recordings
    assert recording.recording_id == recording_id
    numbers = mp4_frame_numbers(recording.mp4)
    # no frame lost or duplicated at the pre-event/live handoff or at any segment boundary
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    # ≥ 30 s of pre-event, proven by the pixels: the press happened at press_frame
    assert press_frame - numbers[0] >= PRE_EVENT_S * FPS
    assert numbers[-1] > press_frame + 5 * FPS
    report = json.loads(recording.report.read_text())
    assert len(report["segments"]) >= 3 and report["gaps"] == []
    assert [m["label"] for m in report["markers"]] == ["officer marker"]
    assert report["frame_count"] == len(numbers)
    events = [e.event for e in read_entries(root / "audit")]
    for expected in ("boot", "buffer_start", "record_start", "marker", "record_stop", "dock_connect",
                     "offload_confirm", "shutdown"):
        assert expected in events, expected


def test_console_drives_buttons_battery_and_auto_trigger(provisioned):
    root, made = provisioned
    device = Device(root, sim_config(), sim=True, camera_clock="fast")
    console = SimConsole(device)
    try:
        device.start()
        device.wait_for(lambda: device.sensor_seconds >= 2, HANG_S, "video")
        key_before = (root / "keys" / "device.key").read_bytes()
        with pytest.raises(ProvisionError, match="in use"):  # the running daemon keeps signing with its key
            provision(root, "SIM-E2E", made["agency_pub"], made["vendor_pub"], force=True)
        assert (root / "keys" / "device.key").read_bytes() == key_before
        assert console.execute("bounce record") == "ok (no change)"  # a knock does nothing, and says so
        assert json.loads(console.execute("status"))["state"] == "buffering"
        console.execute("holster on")
        device.wait_for(lambda: device.machine.state is State.RECORDING, HANG_S, "auto trigger")
        assert device.machine.recording.trigger == "auto:holster"
        pins = device.config.pins
        red, green = device.pin_factory.pin(pins.led_red), device.pin_factory.pin(pins.led_green)
        assert red.state == 1 and green.state == 0  # the officer sees red
        console.execute("hold function")  # stealth: dark, and still recording
        device.wait_for(lambda: device.machine.stealth and red.state == 0, 10, "stealth on, red dark")
        assert device.machine.state is State.RECORDING
        console.execute("hold function")
        device.wait_for(lambda: not device.machine.stealth and red.state == 1, 10, "stealth off, red lit")
        console.execute("battery 3")  # below the shutdown level: sealed and stopped by the device's monitor
        device.wait_for(lambda: device.machine.state is State.BUFFERING, HANG_S, "battery stop")
        assert device.machine.last_recording is not None
        reply = console.execute("double record")  # refused: battery too low, and the console says so
        assert reply == "recording refused: battery low" and device.machine.state is State.BUFFERING
        with pytest.raises(ConsoleError, match="which button"):
            console.execute("press elbow")
        with pytest.raises(ConsoleError, match="unknown command"):
            console.execute("dance")
        with pytest.raises(Quit):
            console.execute("quit")
    finally:
        device.stop()
    stops = [e for e in read_entries(root / "audit") if e.event == "record_stop"]
    assert stops[0].details["reason"] == "battery_low" and stops[0].details["sealed"]
    assert any(e.event == "record_refused" for e in read_entries(root / "audit"))


class Picamera2Output:
    """Stand-in for ``picamera2.outputs.Output`` (picamera2 0.3.x constructor and hooks)."""

    def __init__(self, pts=None):
        self.recording = False

    def start(self):
        self.recording = True

    def stop(self):
        self.recording = False

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        pass


def test_raspberry_pi_composition_records_from_picamera2(provisioned, mocker):
    """The non-sim branch: picamera2 (mocked, it needs libcamera) feeds real H.264 into the device."""
    import sys

    from hw_sim.camera import SimCamera
    from hw_sim.decode import decode_frame_numbers
    from hw_sim.pins import sim_pin_factory
    from recorder.chunk import decode_chunk
    from recorder.encoders import PyAVEncoder, run_camera
    from recorder.picamera import PiCameraSource
    from secure_store.verify import decrypt_chunks

    package, encoders, outputs = (mocker.MagicMock(name=n) for n in ("picamera2", "encoders", "outputs"))
    outputs.Output = Picamera2Output
    package.encoders, package.outputs = encoders, outputs
    mocker.patch.dict(sys.modules, {"picamera2": package, "picamera2.encoders": encoders, "picamera2.outputs": outputs})
    root, made = provisioned
    config = with_overrides(sim_config(), video={"pre_event_s": 2.0})
    factory = sim_pin_factory()  # real pins cannot exist here; the branch under test is the camera's
    device = Device(root, config, sim=False, pin_factory=factory)
    assert isinstance(device.camera, PiCameraSource) and device.battery is None
    encoders.H264Encoder.assert_called_once_with(bitrate=300_000, repeat=True, iperiod=FPS)
    packets = []

    class Collect:
        def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
            packets.append((frame, keyframe, timestamp))

    with PyAVEncoder(Collect(), 320, 240, FPS, 300_000) as encoder:
        run_camera(SimCamera(320, 240, FPS).frames(80), encoder)
    finger = Finger(factory, config.controls.bounce_s)
    try:
        device.start()
        picam2 = package.Picamera2.return_value
        (h264, adapter), _ = picam2.start_recording.call_args
        assert h264 is encoders.H264Encoder.return_value
        for packet in packets[:40]:  # 4 s through picamera2's encoder thread, as it would call us
            adapter.outputframe(*packet)
        finger.double(config.pins.record_button)
        device.wait_for(lambda: device.machine.state is State.RECORDING, 10, "the double press")
        for packet in packets[40:]:
            adapter.outputframe(*packet)
        finger.hold(config.pins.record_button, 0.5)
        device.wait_for(lambda: device.machine.state is State.BUFFERING, 10, "the hold")
    finally:
        device.stop()
    picam2.stop_recording.assert_called_once_with()
    picam2.close.assert_called_once_with()
    agency = keys.load_private_key(made["agency"], "agency")
    numbers = []
    for seg in sorted((root / "evidence").glob("*.seg")):
        frames = [f for pt in decrypt_chunks(seg, agency) for f in decode_chunk(pt)]
        numbers += decode_frame_numbers(f.data for f in frames)
    assert numbers == list(range(numbers[0], 80)) and numbers[0] <= 40 - 2 * FPS


def test_camera_failure_seals_the_recording_and_faults(provisioned):
    """A camera that starts delivering garbage mid-recording: the recording is sealed, the device shows FAULT."""
    import threading

    import numpy as np

    from hw_sim.camera import SimCamera

    root, made = provisioned
    config = sim_config()
    device = Device(root, config, sim=True, camera_clock="fast")
    broken = threading.Event()
    camera = SimCamera(320, 240, FPS, pixel_format="yuv420p")

    def failing_frames():
        for number, image, timestamp in camera.frames():
            if broken.is_set():
                yield number, np.zeros((8, 8), np.uint8), timestamp  # a sensor gone wrong
                return
            yield number, image, timestamp

    device.camera.camera = failing_frames()
    try:
        device.start()
        device.wait_for(lambda: device.sensor_seconds >= 3, HANG_S, "video")
        device.machine.handle("record")
        device.wait_for(lambda: device.sensor_seconds >= 6, HANG_S, "recording")
        broken.set()
        red = device.pin_factory.pin(config.pins.led_red)
        red.clear_states()
        deadline = time.monotonic() + HANG_S  # (wait_for would stop at the camera error we caused)
        while not (device.machine.state is State.FAULT and sum(1 for s in red.states if s.state) >= 2):
            assert time.monotonic() < deadline, "no FAULT with a fast-blinking red LED"
            time.sleep(0.05)
    finally:
        device.stop()  # the capture error was reported as a FAULT; shutting down still works
    entries = read_entries(root / "audit")
    stop = next(e for e in entries if e.event == "record_stop")
    assert stop.details["reason"] == "fault" and stop.details["sealed"]
    assert any(e.event == "fault" and "camera" in e.details["reason"] for e in entries)
    from secure_store.verify import verify_path

    assert verify_path(root / "evidence", keys.load_public_key(root / "keys" / "device.pub", "device")).ok


def test_device_cli_reads_commands_from_stdin(provisioned, tmp_path):
    import subprocess
    import sys

    root, _ = provisioned
    config = tmp_path / "config.toml"
    config.write_text('[video]\nresolution = "320x240"\nfps = 10\n[controls]\nstop_hold_s = 0.5\n')
    run = subprocess.run(
        [sys.executable, "-m", "firmware.cli", "device", "--sim", "--root", str(root), "--config", str(config)],
        input="double record\nstatus\nhold record\nstatus\nfly away\nquit\n", capture_output=True, text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    statuses = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert [s["state"] for s in statuses] == ["recording", "buffering"]
    assert "error: unknown command 'fly'" in run.stdout
    events = [e.event for e in read_entries(root / "audit")]
    assert events.count("record_start") == 1 and events.count("record_stop") == 1 and events[-1] == "shutdown"

    config.write_text("[video]\npre_event_s = 200\n")
    bad = subprocess.run([sys.executable, "-m", "firmware.cli", "device", "--sim", "--root", str(root),
                          "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "bodycam: config: video.pre_event_s = 200 is not allowed (expected a number from 0 to 120)"


def summary_device_id(tmp_path) -> str:
    return next(p for p in (tmp_path / "demo" / "dock").iterdir() if not p.name.startswith(".")).name


def test_demo_runs_the_whole_journey(tmp_path):
    from firmware.demo import MARKER_FILE, DemoError, run_demo

    lines = []
    summary = run_demo(tmp_path / "demo", resolution="320x240", fps=10, bitrate=300_000, say=lines.append)
    assert summary.verified and not summary.problems
    assert summary.pre_event_s >= 30 and summary.segments >= 2 and summary.markers == ["officer marker"]
    assert summary.confirmed == summary.segments and len(summary.mp4s) == 1 and summary.mp4s[0].stat().st_size
    assert (tmp_path / "demo" / "sim-keys" / MARKER_FILE).read_text().startswith("SIMULATION ONLY")
    assert any("double-pressed record" in line for line in lines)
    store = tmp_path / "demo" / "dock" / summary_device_id(tmp_path)  # the PKI at work: no enrolled dock keys
    assert [p.name for p in (store / "receipts").iterdir()] == ["receipt-000000000001.json"]
    assert sorted(p.name.split("-")[0] for p in (store / "certs").iterdir()) == ["device", "dock"]
    assert not list((tmp_path / "demo" / "device" / "keys" / "docks").glob("*.pub"))
    assert any("verified against the agency root: OK" in line for line in lines)
    _assert_demo_footage_in_the_worm_bucket(tmp_path / "demo", summary.segments)
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("not a demo")
    with pytest.raises(DemoError, match="not made by bodycam demo"):
        run_demo(tmp_path / "precious")
    assert (tmp_path / "precious" / "notes.txt").exists()


def _assert_demo_footage_in_the_worm_bucket(out, segments: int) -> None:
    """The demo's store, started again on its data: every segment locked there, none left on the camera."""
    import boto3
    from dock.seaweed import SeaweedServer
    assert not list((out / "device" / "evidence").glob("seg-*"))
    with SeaweedServer(out / "evidence-store") as store:
        s3 = boto3.client("s3", **store.client_kwargs())
        listed = s3.list_objects_v2(Bucket="evidence", Prefix="v1/demo/SIM-DEMO-0001/evidence/")["Contents"]
        stored = sorted(o["Key"].rsplit("/", 1)[-1] for o in listed if o["Key"].endswith(".seg"))
        assert len(stored) == segments
        for name in stored:
            key = f"v1/demo/SIM-DEMO-0001/evidence/{name}"
            assert s3.get_object(Bucket="evidence", Key=key)["Body"].read() == \
                (out / "dock" / "SIM-DEMO-0001" / "evidence" / name).read_bytes()
            assert s3.get_object_retention(Bucket="evidence", Key=key)["Retention"]["Mode"] == "COMPLIANCE"
