"""The device daemon's view: start() serves docks whenever the port is present, across dockings."""

from __future__ import annotations

import time

from dock.client import pull
from hw_sim.link import LinkedPtys

DEVICE_ID = "CAM-0042"


def test_server_serves_each_docking_until_stopped(device, keyset, tmp_path):
    port = tmp_path / "ttyGS0"       # appears when docked, vanishes when undocked
    out = tmp_path / "archive"
    clock_sets: list[int] = []
    server = device.server(str(port), on_clock_set=clock_sets.append)
    server.start()
    try:
        time.sleep(0.6)              # undocked: the server waits for the port
        for visit in range(2):
            device.record(segments=1)
            with LinkedPtys(link_a=port) as cable:
                summary = pull(cable.b_path, out, keyset.dock)
            assert summary.confirmed == [f"seg-000000000{visit + 1}.seg"]
            time.sleep(0.3)
    finally:
        server.stop()
    assert device.evidence() == {}
    assert len(clock_sets) == 2
    events = [e.event for e in device.events()]
    assert events.count("offload_start") == 2 and events.count("offload_end") == 2
    assert events.count("delete") == 2
    assert sorted(p.name for p in (out / DEVICE_ID / "evidence").glob("*.seg")) == [
        "seg-0000000001.seg", "seg-0000000002.seg"]
