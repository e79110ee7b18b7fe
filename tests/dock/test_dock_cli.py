"""``bodycam dock pull`` and ``bodycam dock watch`` end to end, over real ptys."""

from __future__ import annotations

import threading
import time

from firmware.cli import main
from hw_sim.link import LinkedPtys

DEVICE_ID = "CAM-0042"


def test_dock_pull_command(device, dock_key_file, tmp_path, capsys):
    device.record(segments=2)
    before = device.evidence()
    out = tmp_path / "archive"
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        code = main(["dock", "pull", "--port", cable.b_path, "--out", str(out), "--dock-key", str(dock_key_file)])
        served.join()
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert f"{DEVICE_ID}: fetched 5 files" in printed.out and "2 segments verified, 2 confirmed" in printed.out
    assert all((out / DEVICE_ID / "evidence" / n).read_bytes() == d for n, d in before.items())


def test_dock_pull_errors_are_one_line(tmp_path, dock_key_file, capsys):
    missing = tmp_path / "ttyNONE"
    assert main(["dock", "pull", "--port", str(missing), "--out", str(tmp_path / "o"),
                 "--dock-key", str(dock_key_file)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("bodycam: cannot open") and "\n" not in err
    assert main(["dock", "pull", "--port", str(missing), "--out", str(tmp_path / "o"),
                 "--dock-key", str(tmp_path / "nokey")]) == 1
    assert "not found" in capsys.readouterr().err


def test_dock_watch_serves_devices_as_they_dock(device, dock_key_file, tmp_path, capsys):
    """The port appears when the device docks and vanishes when it leaves; watch pulls each visit."""
    port = tmp_path / "ttyDOCK"
    out = tmp_path / "archive"
    device.record(segments=1)
    result: list[int] = []
    watcher = threading.Thread(target=lambda: result.append(main([
        "dock", "watch", "--port", str(port), "--out", str(out), "--dock-key", str(dock_key_file),
        "--max-sessions", "2", "--no-progress"])))
    watcher.start()
    for visit in range(2):
        time.sleep(0.3)                                   # undocked: no port
        with LinkedPtys(link_b=port) as cable:
            served = device.serve(cable.a_path)
            served.join()
        device.record(segments=1)                         # records between dockings
    watcher.join(30)
    assert result == [0]
    printed = capsys.readouterr().out
    assert printed.count(f"{DEVICE_ID}: fetched") == 2
    assert sorted(p.name for p in (out / DEVICE_ID / "evidence").glob("*.seg")) == [
        "seg-0000000001.seg", "seg-0000000002.seg"]
