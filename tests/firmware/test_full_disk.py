"""A truly full disk, on a real small file system (a tmpfs mounted for the test).

Another writer takes the last blocks while the camera records; the camera must still seal
every segment, say so in its audit log, refuse the next start with the refusal cue (never
the start cue), reboot without a traceback, and let a dock pull and free space. Skipped
only where mounting a tmpfs is impossible (not root, no mount namespace).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dock.client import pull
from firmware.config import Config, with_overrides
from firmware.device import Device
from firmware.machine import State
from firmware.provision import provision
from hw_sim.link import LinkedPtys
from secure_store import keys
from secure_store.audit import read_entries
from secure_store.reserve import RESERVE_FILE
from secure_store.verify import verify_path

FPS = 10


@pytest.fixture
def small_fs(make_tmpfs):
    """A 24 MiB tmpfs of our own: filling it fills nobody else's disk."""
    return make_tmpfs(24)


def fill(directory: Path, name: str = "other-writer.bin") -> Path:
    """Another writer takes every free block (big writes, then page by page)."""
    path = directory / name
    with open(path, "ab", buffering=0) as f:
        for block in (1 << 20, 4096, 512):
            while True:
                try:
                    f.write(b"\xa5" * block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    st = os.statvfs(directory)
    assert st.f_bavail * st.f_frsize < 64 * 1024  # a few KB at most are left
    return path


@pytest.fixture
def device_root(small_fs, tmp_path):
    made = {}
    for kind in ("agency", "vendor", "dock"):
        made[kind], made[kind + "_pub"] = keys.write_keypair(kind, tmp_path / kind)
    root = small_fs / "device"
    provision(root, "SIM-FULL", made["agency_pub"], made["vendor_pub"], [made["dock_pub"]])
    return root, made


def config() -> Config:
    return with_overrides(
        Config(),
        video={"resolution": "320x240", "fps": FPS, "pre_event_s": 3.0, "segment_s": 2.0, "bitrate": 300_000},
        storage={"reserve_mb": 0},
    )


def boot(root, **kwargs) -> Device:
    device = Device(root, config(), sim=True, camera_clock="stepped", **kwargs)
    device.start()
    return device


def events(root, name):
    return [e for e in read_entries(root / "audit") if e.event == name]


def unsealed(root) -> list[str]:
    return [p.name for p in (root / "evidence").glob("seg-*.seg") if not p.with_suffix(".manifest").exists()]


def test_full_disk_during_a_recording_seals_it_says_so_and_refuses_the_next_start(device_root):
    root, _ = device_root
    device = boot(root)
    try:
        device.sensor_gate.allow_until(4.0)
        device.wait_sensor(4.0, "pre-event")
        device.machine.handle("record", gesture="double")
        assert device.machine.state is State.RECORDING
        device.sensor_gate.allow_until(8.0)
        device.wait_sensor(8.0, "recording")
        filler = fill(root.parent)  # another writer leaves a few KB
        device.sensor_gate.allow_until(12.0)  # the next chunks find no room
        device.wait_for(lambda: device.machine.state is State.BUFFERING, 120, "the storage-full stop")

        before = device.machine.decision_count
        device.machine.handle("record", gesture="double")  # full: refused before anything starts
        assert device.machine.decisions_since(before) == ["recording refused: storage full"]
        assert device.machine.state is State.BUFFERING
    finally:
        device.stop()

    assert unsealed(root) == []  # every segment has its signed manifest
    assert verify_path(root / "evidence", keys.load_public_key(root / "keys" / "device.pub", "device")).ok
    [stop] = events(root, "record_stop")
    assert stop.details["reason"] == "storage_full"
    assert stop.details["sealed"] is True and stop.details["storage_full"] is True and not stop.details["failure"]
    assert events(root, "storage_full") and events(root, "record_refused")
    starts = events(root, "record_start")
    assert len(starts) == 1  # the refused press never started (or cued) a recording
    assert filler.exists()


def start_daemon(root: Path) -> subprocess.Popen:
    """``bodycam device --sim`` as its own process, reading console commands from a pipe."""
    (root / "config.toml").write_text(
        '[video]\nresolution = "320x240"\nfps = 10\npre_event_s = 3.0\nsegment_s = 2.0\nbitrate = 300000\n'
        '[storage]\nreserve_mb = 0\n')
    return subprocess.Popen([sys.executable, "-m", "firmware.cli", "device", "--sim", "--root", str(root)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(condition, what: str, hang_s: float = 120.0) -> None:
    """Poll the file system for what a real process does; ``hang_s`` only catches a hung one."""
    deadline = time.monotonic() + hang_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def test_sigkill_then_a_full_disk_without_reserve_still_boots_and_docks(device_root, tmp_path):
    """The worst case: killed mid-recording, then the disk filled, the reserve gone too."""
    root, made = device_root
    daemon = start_daemon(root)
    try:
        daemon.stdin.write("double record\n")
        daemon.stdin.flush()
        wait_until(lambda: daemon.poll() is not None
                   or any(p.stat().st_size > 30_000 for p in (root / "evidence").glob("seg-*.seg")),
                   "a segment being written")
        assert daemon.poll() is None, daemon.communicate()
    finally:
        daemon.kill()  # SIGKILL: no stop, no seal
        daemon.communicate()
    torn = unsealed(root)
    assert torn
    (root / "state" / RESERVE_FILE).unlink(missing_ok=True)
    filler = fill(root.parent)

    with LinkedPtys() as cable:
        device = Device(root, config(), sim=True, camera_clock="stepped", port=cable.a_path)
        try:
            device.start()  # no traceback: recovery waits for room
            assert device.machine.state is State.BUFFERING and device.store.recovery_pending
            assert device.machine.storage_level == "full"
            before = device.machine.decision_count
            device.machine.handle("record", gesture="double")
            assert device.machine.decisions_since(before) == ["recording refused: storage full"]

            device.machine.handle("dock")  # the dock pulls what is sealed and frees it
            pulled = pull(cable.b_path, tmp_path / "dock", keys.load_private_key(made["dock"], "dock"))
            assert pulled.confirmed  # released on the device
            device.machine.tick()  # room again: the torn segment is sealed now
            assert not device.store.recovery_pending and unsealed(root) == []
        finally:
            device.stop()
    recovered = [e for e in events(root, "power_recovery") if e.details.get("segment") in [t[:-4] for t in torn]]
    assert recovered and all(e.details["chunks_kept"] >= 1 for e in recovered)
    entries = read_entries(root / "audit")  # what happened while the disk was full, written once it was not
    deferred = [e.event for e in entries if e.details.get("deferred")]
    assert "segment_sealed" in deferred and "record_refused" in deferred
    dock_copy = tmp_path / "dock" / "SIM-FULL" / "evidence"  # the dock holds it all, and it verifies
    report = verify_path(dock_copy, keys.load_public_key(root / "keys" / "device.pub", "device"))
    assert report.ok and report.segments, [str(p) for p in report.problems]
    assert filler.exists()
