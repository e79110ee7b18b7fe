"""Everyday faults around ``bodycam dock pull``: a busy port, a Ctrl-C'd pull, a typo'd --out,
--no-confirm, a pull with nothing new. Real ptys, real processes where the fault is a process's."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from dock.client import DockClient, pull
from firmware.cli import main
from hw_sim.link import LinkedPtys

DEVICE_ID = "CAM-0042"
ROOT = Path(__file__).resolve().parents[2]


def _bodycam(*args: str) -> subprocess.Popen:
    """Start ``bodycam ARGS``, with Ctrl-C working in it even when this suite runs in the
    background: a shell starts a background job with SIGINT ignored, and an ignored signal stays
    ignored in every child (a handled one is reset to the default at exec, so Python raises
    KeyboardInterrupt on it again)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen([sys.executable, "-m", "firmware.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)


def _wait_for(condition, what: str, limit: float = 60.0) -> None:
    """Poll the file system for something another process does (a bound, not a timing assert)."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def test_a_second_pull_on_a_busy_port_says_port_busy(device, keyset, dock_key_file, tmp_path):
    device.record(segments=2)
    before = device.evidence()
    with LinkedPtys() as cable:
        server = device.server(cable.a_path)
        server.start()
        try:
            with DockClient.connect(cable.b_path, keyset.dock) as first:       # a pull in progress
                second = _bodycam("dock", "pull", "--port", cable.b_path, "--out", str(tmp_path / "other"),
                                  "--dock-key", str(dock_key_file))
                out, err = second.communicate(timeout=60)
                assert second.returncode == 1
                assert err.strip().startswith("bodycam: port busy:") and "\n" not in err.strip()
                assert "signature" not in err and "Traceback" not in err
                assert {i.name for i in first.list_evidence()} >= set(before)   # the first goes on undisturbed
            summary = pull(cable.b_path, tmp_path / "archive", keyset.dock)
        finally:
            server.stop()
    assert summary.ok and len(summary.confirmed) == 2
    assert all((tmp_path / "archive" / DEVICE_ID / "evidence" / n).read_bytes() == d for n, d in before.items())


def _hold_fetches_midway(server, resume: threading.Event, after: int = 65536) -> None:
    """Make the device's fetch stop sending once ``after`` bytes of a file are out, until
    ``resume``: the pull is mid-file when the test acts, however busy the machine is."""
    fetch = server.commands["fetch"]

    def held(request):
        send, sent = request.send_chunk, 0

        def send_chunk(offset: int, data: bytes) -> None:
            nonlocal sent
            if sent >= after:
                assert resume.wait(120), "the test never resumed the held fetch"
            send(offset, data)
            sent += len(data)
        request.send_chunk = send_chunk
        return fetch(request)
    server.add_command("fetch", held)


def test_a_pull_stopped_by_ctrl_c_lets_the_next_pull_start_at_once(device, keyset, dock_key_file, tmp_path):
    """SIGINT in the middle of a fetch: the dock says CLOSE, the device's daemon is ready for the
    next pull at once (no "no HELLO_REPLY"), which resumes and finishes with identical files."""
    device.record(segments=2, chunks=4, frame_bytes=50_000)    # ~2 MB
    before = device.evidence()
    out = tmp_path / "archive"
    evidence = out / DEVICE_ID / "evidence"
    resume = threading.Event()
    with LinkedPtys() as cable:
        server = device.server(cable.a_path)
        _hold_fetches_midway(server, resume)
        server.start()                                       # the daemon's way: session after session
        try:
            first = _bodycam("dock", "pull", "--port", cable.b_path, "--out", str(out),
                             "--dock-key", str(dock_key_file))
            _wait_for(lambda: evidence.is_dir() and any(p.stat().st_size for p in evidence.glob(".*.part")),
                      "the first pull to be fetching")
            first.send_signal(signal.SIGINT)
            _, err = first.communicate(timeout=60)
            resume.set()                                     # the device sends on, to a dock that has gone
            assert first.returncode == 130 and "Traceback" not in err, err
            summary = pull(cable.b_path, out, keyset.dock, handshake_timeout=10.0)   # at once, same port
        finally:
            resume.set()
            server.stop()
    assert summary.ok, summary.problems
    assert summary.bytes_resumed > 0
    for name, data in before.items():
        assert (evidence / name).read_bytes() == data
    assert device.evidence() == {}
    ends = [e.details.get("ended") for e in device.events() if e.event == "offload_end"]
    assert ends[0] == "the peer closed the session: dock interrupted"


def test_out_with_a_missing_parent_is_refused_and_nothing_made(tmp_path, dock_key_file, capsys):
    typo = tmp_path / "archvie" / "cam"
    code = main(["dock", "pull", "--port", str(tmp_path / "ttyNONE"), "--out", str(typo),
                 "--dock-key", str(dock_key_file)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "does not exist" in err and "\n" not in err
    assert not typo.parent.exists()


def test_a_port_that_is_not_there_is_one_line(tmp_path, dock_key_file, capsys):
    code = main(["dock", "pull", "--port", str(tmp_path / "ttyACM9"), "--out", str(tmp_path / "o"),
                 "--dock-key", str(dock_key_file)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err == f"bodycam: cannot open {tmp_path / 'ttyACM9'}: no such port"


def test_no_confirm_verifies_and_says_the_device_keeps_its_copy(device, dock_key_file, tmp_path, capsys):
    device.record(segments=2)
    before = device.evidence()
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        code = main(["dock", "pull", "--port", cable.b_path, "--out", str(tmp_path / "a"),
                     "--dock-key", str(dock_key_file), "--no-confirm"])
        served.join()
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "2 segments verified, none confirmed (--no-confirm): the device keeps its copy" in printed.out
    assert device.evidence() == before
    assert [e.event for e in device.events()].count("offload_confirm") == 0


def test_a_pull_with_nothing_new_says_so_and_no_progress_bar_off_a_terminal(device, dock_key_file, tmp_path,
                                                                           capsys):
    device.record(segments=1)
    args = ["dock", "pull", "--out", str(tmp_path / "a"), "--dock-key", str(dock_key_file)]
    for _ in range(2):
        with LinkedPtys() as cable:
            served = device.serve(cable.a_path)
            assert main([*args, "--port", cable.b_path]) == 0
            served.join()
    printed = capsys.readouterr()
    # one summary line per pull (the recordings and the camera's status follow it, indented)
    first, second = [line for line in printed.out.strip().splitlines() if line.startswith(DEVICE_ID)]
    assert first.startswith(f"{DEVICE_ID}: fetched 3 files")
    assert second.startswith(f"{DEVICE_ID}: no new footage, audit log updated, 0 already here")
    assert f"pull {DEVICE_ID}" not in printed.err and "B/s" not in printed.err    # stderr is not a terminal
