"""SIGKILL of the dock in the middle of an upload to the store: nothing lost, nothing confirmed early.

The dock runs as a real process (``bodycam ...``); the network to the real SeaweedFS server
goes through a TCP relay that holds the line after N bytes, so the kill lands exactly
mid-upload (no sleeps, no timing guesses). Each run resumes from the dock's durable queue.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

from dock.store_config import store_config_toml
from hw_sim.link import LinkedPtys
from hw_sim.network import TcpRelay

DEVICE_ID = "CAM-0042"
PREFIX = f"v1/test-force/{DEVICE_ID}"


def _bodycam(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "firmware.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2])


def _config_file(path: Path, config) -> Path:
    path.write_text(store_config_toml(config))
    path.chmod(0o600)
    return path


def _stored(s3, bucket: str) -> dict[str, bytes]:
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=PREFIX + "/evidence/").get("Contents", [])
    return {o["Key"].rsplit("/", 1)[-1]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listing}


def _wait_stalled_or_exit(net: TcpRelay, proc: subprocess.Popen) -> bool:
    """True once the relay holds the line with the dock still running; False if the dock ended."""
    while proc.poll() is None:
        if net.stalled.wait(0.05):
            return proc.poll() is None
    return False


def test_sigkill_of_the_dock_mid_upload_ten_times_then_resume(device, keyset, seaweed, store_config, s3, bucket,
                                                              tmp_path, dock_key_file):
    device.record(segments=2, chunks=8, frame_bytes=150_000)            # ~6 MB per segment: two parts each
    before = device.evidence()
    archive = tmp_path / "archive"
    with TcpRelay(("127.0.0.1", seaweed.s3_port)) as net:
        config = dataclasses.replace(store_config, endpoint=net.endpoint, multipart_threshold=5 * 2**20,
                                     part_size=5 * 2**20, max_concurrency=1)
        cfg = _config_file(tmp_path / "dock.toml", config)
        kills = 0
        # ten cut points inside the first 5 MiB part (handshake with the store, HEADs, the part itself),
        # then one after it, so the last run must resume a multipart upload
        budgets = [200 + i * 480_000 for i in range(10)] + [7_000_000]
        for i, budget in enumerate(budgets):
            net.stall_after(budget)
            with LinkedPtys() as cable:
                served = device.serve(cable.a_path, wait=30)
                dock = _bodycam("dock", "pull", "--port", cable.b_path, "--out", str(archive), "--dock-key",
                                str(dock_key_file), "--store-config", str(cfg), "--no-progress")
                if _wait_stalled_or_exit(net, dock):
                    os.kill(dock.pid, signal.SIGKILL)
                    kills += 1
                dock.wait(60)
                net.cut()                                                # what was in flight dies with the line
                net.restore()
                cable.unplug()
                served.join(60)
            stored = _stored(s3, bucket)
            for name, data in before.items():          # whatever the camera freed, the store holds, locked
                if name not in device.evidence():
                    assert stored.get(name) == data, f"run {i}: {name} freed on the camera but not in the store"
        assert kills == len(budgets)
        sent_before = net.bytes_up
        with LinkedPtys() as cable:                                      # the line is good again
            served = device.serve(cable.a_path, wait=30)
            dock = _bodycam("dock", "pull", "--port", cable.b_path, "--out", str(archive), "--dock-key",
                            str(dock_key_file), "--store-config", str(cfg), "--no-progress")
            out = dock.communicate(timeout=120)[0].decode()
            served.join(60)
        assert dock.returncode == 0, out
        resent = net.bytes_up - sent_before
    assert device.evidence() == {}, out
    assert _stored(s3, bucket) == before                                 # byte-identical, nothing twice
    assert resent < sum(len(b) for b in before.values())                 # parts sent before the kills were kept
    for name, data in before.items():
        head = s3.head_object(Bucket=bucket, Key=f"{PREFIX}/evidence/{name}")
        assert head["ObjectLockMode"] == "COMPLIANCE" and head["ContentLength"] == len(data)
    assert list((archive / ".ingest" / "queue").glob("*.json")) == []
