"""`bodycam device` as a real process: every stop signal seals, one daemon per root, clear start-up lines."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firmware import rootlock
from firmware.provision import provision
from secure_store import keys
from secure_store.audit import read_entries
from secure_store.verify import verify_path

CONFIG = ('[video]\nresolution = "320x240"\nfps = 10\npre_event_s = 3.0\nsegment_s = 2.0\nbitrate = 300000\n'
          '[storage]\nreserve_mb = 0\n')


@pytest.fixture
def root(tmp_path) -> Path:
    made = {}
    for kind in ("agency", "vendor", "dock"):
        made[kind], made[kind + "_pub"] = keys.write_keypair(kind, tmp_path / kind)
    root = tmp_path / "device"
    provision(root, "SIM-DAEMON", made["agency_pub"], made["vendor_pub"], [made["dock_pub"]])
    (root / "config.toml").write_text(CONFIG)
    return root


def daemon(root: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "GPIOZERO_PIN_FACTORY"}
    return subprocess.Popen([sys.executable, "-m", "firmware.cli", "device", "--root", str(root), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)


def wait_until(condition, what: str, proc: subprocess.Popen, hang_s: float = 120.0) -> None:
    """Poll for what a real process does; ``hang_s`` only catches a hung one."""
    deadline = time.monotonic() + hang_s
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"daemon exited early while waiting for {what}: {proc.communicate()}")
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def locked_by(root: Path) -> str:
    return rootlock.holder(root)


def recording(root: Path) -> bool:
    return any(p.stat().st_size > 20_000 for p in (root / "evidence").glob("seg-*.seg"))


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_every_stop_signal_seals_the_recording(root, signum):
    proc = daemon(root, "--sim")
    try:
        proc.stdin.write("double record\n")
        proc.stdin.flush()
        wait_until(lambda: recording(root), "a recording", proc)
        os.kill(proc.pid, signum)  # a closed terminal, Ctrl-C, or systemd
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    segments = sorted((root / "evidence").glob("seg-*.seg"))
    assert segments and all(s.with_suffix(".manifest").exists() for s in segments)
    report = verify_path(root / "evidence", keys.load_public_key(root / "keys" / "device.pub", "device"))
    assert report.ok and not any(s.summary().get("recovered") for s in report.segments)
    [stop] = [e for e in read_entries(root / "audit") if e.event == "record_stop"]
    assert stop.details["reason"] == "daemon stopped" and stop.details["sealed"] is True
    assert re.search(r"^recording \S+ started$", out, re.M) and "[red LED on]" in out, out
    assert "Traceback" not in err


def test_a_second_daemon_on_the_same_root_is_refused(root):
    first = daemon(root, "--sim")
    try:
        wait_until(lambda: locked_by(root) == str(first.pid), "the lock", first)
        second = daemon(root, "--sim")
        out, err = second.communicate(timeout=120)
        assert second.returncode == 1
        assert err.strip().startswith(f"bodycam: device root {root} is in use by pid {first.pid} ")
        assert len(err.strip().splitlines()) == 1
        first.stdin.write("status\nquit\n")
        first.stdin.flush()
        out, err = first.communicate(timeout=120)
        assert first.returncode == 0 and '"state": "buffering"' in out
    finally:
        if first.poll() is None:
            first.kill()
    with rootlock.acquire(root):  # released when the daemon ended
        pass


def test_the_lock_dies_with_its_process(root):
    """SIGKILL leaves the lock file, never the lock: the next boot is not stuck."""
    first = daemon(root, "--sim")
    wait_until(lambda: locked_by(root) == str(first.pid), "the lock", first)
    with pytest.raises(rootlock.RootInUse, match=f"in use by pid {first.pid}"):
        rootlock.acquire(root)
    first.kill()
    first.communicate()
    rootlock.acquire(root).release()


def test_a_missing_dock_port_is_a_warning(root, tmp_path):
    port = tmp_path / "no-such-tty"
    proc = daemon(root, "--sim", "--port", str(port))
    out, err = proc.communicate("quit\n", timeout=120)
    assert proc.returncode == 0
    assert f"dock port {port} does not exist" in err


def test_no_pin_factory_hints_at_sim(root):
    proc = daemon(root)  # a PC has no GPIO: one line that says what to do
    out, err = proc.communicate("", timeout=120)
    assert proc.returncode == 1
    assert err.strip().splitlines() == [err.strip()] and "--sim" in err and "Traceback" not in err
