"""Fixtures for the evidence store tests: provisioned device roots with real keys and a real audit log."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

from buffer.frame import Frame
from secure_store import keys
from secure_store.audit import AuditLog
from secure_store.durable import write_atomic
from secure_store.layout import DeviceRoot
from secure_store.store import EvidenceStore
from secure_store.trust import identity_json

DEVICE_ID = "CAM-0001"
FRAME_US = 33_333


class Keyset:
    def __init__(self) -> None:
        self.device = keys.generate("device")
        self.agency = keys.generate("agency")
        self.other_device = keys.generate("device")


@pytest.fixture(scope="session")
def keyset() -> Keyset:
    return Keyset()


def provision_root(path: Path, ks: Keyset, device_key=None, device_id: str = DEVICE_ID) -> DeviceRoot:
    """A device root laid out as provisioning leaves it (only the keys this package reads)."""
    root = DeviceRoot(path)
    device_key = device_key or ks.device
    root.keys.mkdir(parents=True, exist_ok=True)
    write_atomic(root.device_key, keys.private_pem(device_key), 0o600)
    write_atomic(root.device_pub, keys.public_pem(device_key.public_key()))
    write_atomic(root.agency_pub, keys.public_pem(ks.agency.public_key()))
    write_atomic(root.identity, identity_json(device_id, device_key.public_key()))
    return root


def open_store(root: DeviceRoot, ks: Keyset, device_key=None, device_id: str = DEVICE_ID, **kw) -> EvidenceStore:
    device_key = device_key or ks.device
    audit = AuditLog(root.audit, device_key, device_id)
    kw.setdefault("reserve_bytes", 0)
    kw.setdefault("clock", lambda: 1_764_000_000.0)
    return EvidenceStore(root, device_id=device_id, signing_key=device_key,
                         agency_public_key=ks.agency.public_key(), audit=audit, **kw)


@pytest.fixture
def device(tmp_path: Path, keyset: Keyset) -> Callable[..., EvidenceStore]:
    """Factory: ``device()`` → an EvidenceStore on a fresh provisioned root under tmp_path."""
    counter = iter(range(1000))

    def make(name: str | None = None, **kw) -> EvidenceStore:
        root = provision_root(tmp_path / (name or f"dev{next(counter)}"), keyset,
                              kw.pop("device_key", None), kw.get("device_id", DEVICE_ID))
        return open_store(root, keyset, **kw)

    return make


def gop(first_frame: int, n: int = 5, size: int = 200) -> list[Frame]:
    """n synthetic frames numbered from first_frame; the number is in the bytes, so tests can read it back."""
    return [Frame(b"\x00\x00\x00\x01" + (first_frame + i).to_bytes(4, "big") + os.urandom(size), i == 0,
                  (first_frame + i) * FRAME_US) for i in range(n)]


def frame_numbers(frames) -> list[int]:
    return [int.from_bytes(f.data[4:8], "big") for f in frames]


def record(store: EvidenceStore, recording_id: str = "rec-1", segments: int = 2, chunks: int = 3,
           frames_per_chunk: int = 5, first_frame: int = 0, first_index: int = 0, sealer=None) -> int:
    """Seal ``segments`` segments of ``chunks`` GOPs each; returns the next frame number."""
    sealer = sealer or store.open_sealer()
    n = first_frame
    for s in range(segments):
        sealer.begin_segment(recording_id, first_index + s)
        for _ in range(chunks):
            sealer.write_chunk(gop(n, frames_per_chunk))
            n += frames_per_chunk
        sealer.end_segment()
    return n


class Helpers:
    """The helpers above, as a fixture (test modules cannot import conftest under importlib mode)."""

    DEVICE_ID = DEVICE_ID
    FRAME_US = FRAME_US
    gop = staticmethod(gop)
    frame_numbers = staticmethod(frame_numbers)
    record = staticmethod(record)
    provision_root = staticmethod(provision_root)
    open_store = staticmethod(open_store)


@pytest.fixture(scope="session")
def h() -> type[Helpers]:
    return Helpers
