"""Fixtures for the dock link tests: a real device (sealed store, audit log, keys) and a server thread.

Everything is real: sealed segments from EvidenceStore, Ed25519/X25519 keys, pty pairs
opened with pyserial through hw_sim.link.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from buffer.frame import Frame
from firmware.offload import OffloadServer, OffsetClock
from secure_store import keys
from secure_store.audit import AuditLog, read_entries
from secure_store.durable import write_atomic
from secure_store.layout import DeviceRoot
from secure_store.store import EvidenceStore
from secure_store.trust import identity_json

DEVICE_ID = "CAM-0042"
FRAME_US = 33_333


class Keyset:
    def __init__(self) -> None:
        self.device = keys.generate("device")
        self.agency = keys.generate("agency")
        self.dock = keys.generate("dock")
        self.stranger = keys.generate("dock")


class ServerThread:
    """``OffloadServer.serve_session`` on a thread; keeps its result or exception."""

    def __init__(self, server: OffloadServer, wait: float) -> None:
        self.server = server
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(wait,), daemon=True)
        self.thread.start()

    def _run(self, wait: float) -> None:
        try:
            self.result = self.server.serve_session(wait=wait)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            self.error = exc

    def join(self, timeout: float = 30.0) -> "ServerThread":
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the device's session did not end"
        return self


@dataclass
class Device:
    root: DeviceRoot
    store: EvidenceStore
    audit: AuditLog
    clock: OffsetClock
    ks: Keyset
    next_frame: int = 0
    next_index: dict[str, int] = field(default_factory=dict)

    def record(self, segments: int = 2, chunks: int = 3, frame_bytes: int = 4000,
               recording_id: str = "rec-1") -> None:
        """Seal ``segments`` real segments; frame numbers are in the frame bytes."""
        sealer = self.store.open_sealer()
        for _ in range(segments):
            index = self.next_index.get(recording_id, 0)
            self.next_index[recording_id] = index + 1
            sealer.begin_segment(recording_id, index)
            for _ in range(chunks):
                frames = [Frame(self.next_frame.to_bytes(4, "big") + os.urandom(frame_bytes), i == 0,
                                self.next_frame * FRAME_US) for i in range(5)]
                self.next_frame += 5
                sealer.write_chunk(frames)
            sealer.end_segment()

    def evidence(self) -> dict[str, bytes]:
        """Name → bytes of every sealed segment and manifest now on the device."""
        return {i.name: self.store.evidence_path(i.name).read_bytes()
                for i in self.store.list_evidence() if i.kind != "audit"}

    def events(self) -> list[Any]:
        return read_entries(self.root.audit)

    def server(self, port: str, docks: list | None = None, **kw: Any) -> OffloadServer:
        return OffloadServer(port, self.store, self.audit, self.ks.device, DEVICE_ID,
                             [self.ks.dock.public_key()] if docks is None else docks,
                             lambda: {"battery_percent": 77, "recording_state": "docked"}, self.clock,
                             idle_timeout=kw.pop("idle_timeout", 5.0), **kw)

    def serve(self, port: str, wait: float = 10.0, **kw: Any) -> ServerThread:
        return ServerThread(self.server(port, **kw), wait)

    def serve_with(self, server: OffloadServer, wait: float = 10.0) -> ServerThread:
        return ServerThread(server, wait)


@pytest.fixture(scope="session")
def keyset() -> Keyset:
    return Keyset()


def _make_device(path: Path, keyset: Keyset) -> Device:
    root = DeviceRoot(path)
    root.keys.mkdir(parents=True)
    write_atomic(root.identity, identity_json(DEVICE_ID, keyset.device.public_key()))
    audit = AuditLog(root.audit, keyset.device, DEVICE_ID)
    clock = OffsetClock(root.state / "clock.json")
    store = EvidenceStore(root, device_id=DEVICE_ID, signing_key=keyset.device,
                          agency_public_key=keyset.agency.public_key(), audit=audit, clock=clock,
                          reserve_bytes=0)
    return Device(root, store, audit, clock, keyset)


@pytest.fixture
def device(tmp_path: Path, keyset: Keyset) -> Device:
    return _make_device(tmp_path / "device", keyset)


@pytest.fixture
def make_device(tmp_path_factory: pytest.TempPathFactory, keyset: Keyset) -> Callable[[], Device]:
    """Factory for a fresh device per hypothesis example."""
    return lambda: _make_device(tmp_path_factory.mktemp("device") / "root", keyset)


@pytest.fixture
def dock_key_file(tmp_path: Path, keyset: Keyset) -> Path:
    path = tmp_path / "dock.key"
    write_atomic(path, keys.private_pem(keyset.dock), 0o600)
    return path



# --- the evidence store: one real SeaweedFS server per test session, a fresh bucket per test ---

@pytest.fixture(scope="session")
def seaweed():
    """A real S3 server with Object Lock (SeaweedFS ``weed mini``) on 127.0.0.1, for the session."""
    from dock.seaweed import SeaweedServer
    with SeaweedServer() as server:
        yield server


@pytest.fixture
def s3(seaweed):
    import boto3
    return boto3.client("s3", **seaweed.client_kwargs())


@pytest.fixture
def bucket(s3, request) -> str:
    """A new Object Lock bucket for this test (SeaweedFS keeps them all until the session ends)."""
    import re
    import uuid
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:8]
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


@pytest.fixture
def store_config(seaweed, bucket):
    from dock.store_config import StoreConfig
    return StoreConfig(bucket=bucket, agency="test-force", endpoint=seaweed.endpoint,
                       access_key_id=seaweed.access_key, secret_access_key=seaweed.secret_key,
                       retention_days={"default": 1}, multipart_threshold=6 * 2**20, part_size=5 * 2**20,
                       connect_timeout=2, read_timeout=10, max_attempts=1)


@pytest.fixture
def record_h264():
    """``record_h264(root, signing, agency, device_id)``: two real H.264 recordings (sim camera -> libx264 ->
    sealer, 1-s segments: rec-1 of 25 frames, rec-2 of 12), with their audit entries."""
    from hw_sim.camera import SimCamera
    from recorder.encoders import PyAVEncoder
    from recorder.segmenter import Segmenter
    from secure_store.audit import Event

    def record(root: DeviceRoot, signing, agency, device_id: str, width: int = 256, height: int = 144,
               fps: int = 10) -> None:
        audit = AuditLog(root.audit, signing, device_id)
        store = EvidenceStore(root, device_id=device_id, signing_key=signing, agency_public_key=agency.public_key(),
                              audit=audit, reserve_bytes=0)
        camera = SimCamera(width, height, fps)
        for recording, first, count in (("rec-1", 0, 25), ("rec-2", 100, 12)):
            segmenter = Segmenter(store.open_sealer(), recording, segment_s=1.0)
            audit.append(Event.RECORD_START, recording=recording, trigger="button", pre_event_s=0)
            encoder = PyAVEncoder(segmenter, width, height, fps, bitrate=300_000)
            for number in range(first, first + count):
                encoder.encode(camera.render(number), camera.timestamp_us(number))
            encoder.close()
            segmenter.close()
            audit.append(Event.RECORD_STOP, recording=recording, reason="button")

    return record
