"""The agency PKI over a real pty link: certified admission both ways, CRLs to the device, receipts,
and a re-provisioning the dock follows by itself so the whole history verifies against the root."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from buffer.frame import Frame
from dock.client import PullError, pull
from dock.trust import DockTrust
from firmware.offload import OffloadServer, OffsetClock, load_enrolled_docks
from firmware.provision import provision
from hw_sim.link import LinkedPtys
from link.session import AuthError
from secure_store import keys, pki
from secure_store.admission import DeviceTrustAnchor
from secure_store.audit import AuditLog
from secure_store.layout import DeviceRoot
from secure_store.store import EvidenceStore
from secure_store.verify import verify_path

DEVICE_ID = "CAM-0077"


class Booted:
    """A provisioned device root, booted: store, audit log and the device end of the link."""

    def __init__(self, root: DeviceRoot, frame: int = 0) -> None:
        self.root, self.frame = root, frame
        self.key = keys.load_private_key(root.device_key, "device")
        self.audit = AuditLog(root.audit, self.key, DEVICE_ID)
        self.store = EvidenceStore(root, device_id=DEVICE_ID, signing_key=self.key, audit=self.audit,
                                   agency_public_key=keys.load_public_key(root.agency_pub, "agency"),
                                   clock=OffsetClock(root.state / "clock.json"), reserve_bytes=0)
        self.store.recover()

    def record(self, recording_id: str, segments: int) -> None:
        sealer = self.store.open_sealer()
        for index in range(segments):
            sealer.begin_segment(recording_id, index)
            for _ in range(2):
                sealer.write_chunk([Frame((self.frame + i).to_bytes(4, "big") + os.urandom(2000), i == 0,
                                          (self.frame + i) * 33_333) for i in range(5)])
                self.frame += 5
            sealer.end_segment()

    def serve_once(self, port: str):
        import threading
        server = OffloadServer(port, self.store, self.audit, self.key, DEVICE_ID,
                               lambda: load_enrolled_docks(self.root.docks), dict,
                               OffsetClock(self.root.state / "clock.json"), idle_timeout=5.0, trust=DeviceTrustAnchor(self.root.root, self.key.public_key()))
        box: dict = {}
        thread = threading.Thread(target=lambda: box.setdefault("r", _catch(server.serve_session, 10.0)))
        thread.start()
        return thread, box


def _catch(fn, *args):
    try:
        return fn(*args)
    except BaseException as exc:  # noqa: BLE001 - the test looks at it
        return exc


@pytest.fixture
def agency(tmp_path):
    ca = pki.CertificateAuthority(tmp_path / "ca")
    ca.init("Metro Police")
    made = {}
    for kind in ("agency", "vendor"):
        _, made[kind] = keys.write_keypair(kind, tmp_path / kind)
    dock = keys.generate("dock")
    chain = ca.issue("dock", "Dock 1", dock.public_key())
    return ca, made, dock, pki.chain_pem(chain).decode()


def _pull(booted: Booted, out: Path, dock, trust: DockTrust):
    with LinkedPtys() as cable:
        thread, box = booted.serve_once(cable.a_path)
        try:
            return pull(cable.b_path, out, dock, trust=trust)
        finally:
            thread.join(30)


def test_certified_pull_rotation_and_crl(tmp_path, agency) -> None:
    ca, made, dock, dock_chain = agency
    root = DeviceRoot(tmp_path / "device")
    provision(root, DEVICE_ID, made["agency"], made["vendor"], ca=ca.dir)  # no dock enrolled
    first = Booted(root)
    first.record("before", 2)
    out = tmp_path / "store"
    revoked_dock = ca.issue("dock", "Dock 0", keys.generate("dock").public_key())[0]
    crl = ca.revoke(revoked_dock)
    trust = DockTrust(ca.root, pki.read_crls([crl]), dock_chain)

    summary = _pull(first, out, dock, trust)
    assert summary.ok and summary.confirmed == ["seg-0000000001.seg", "seg-0000000002.seg"]
    assert (root.keys / "crl" / "provisioning.crl.pem").read_bytes() == crl.read_bytes()  # through the dock
    report = verify_path(out / DEVICE_ID, trust_root=ca.root)
    assert report.ok and report.anchored, [str(p) for p in report.problems]

    provision(root, DEVICE_ID, made["agency"], made["vendor"], force=True, ca=ca.dir)  # daemon stopped
    second = Booted(root, first.frame)
    second.record("after", 1)
    summary = _pull(second, out, dock, trust)  # the dock follows the certified new key by itself
    assert summary.ok and summary.confirmed == ["seg-0000000003.seg"], summary.problems
    identity = json.loads((out / DEVICE_ID / "identity.json").read_text())
    assert identity["retired_device_keys"] == [keys.fingerprint(first.key.public_key())]
    report = verify_path(out / DEVICE_ID, trust_root=ca.root)
    assert report.ok and report.anchored, [str(p) for p in report.problems]
    assert [s.manifest.segment_seq for s in report.segments] == [1, 2, 3]
    assert len({s.device_key_fp for s in report.segments}) == 2
    assert sorted(p.name for p in (out / DEVICE_ID / "receipts").iterdir()) == [
        "receipt-000000000001.json", "receipt-000000000002.json"]
    assert verify_path(out / DEVICE_ID).ok  # and from identity.json alone, not anchored


def test_device_refuses_a_dock_of_another_agency(tmp_path, agency) -> None:
    ca, made, _, _ = agency
    root = DeviceRoot(tmp_path / "device")
    provision(root, DEVICE_ID, made["agency"], made["vendor"], ca=ca.dir)
    booted = Booted(root)
    booted.record("rec", 1)
    other = pki.CertificateAuthority(tmp_path / "other")
    other.init("Someone Else")
    stranger = keys.generate("dock")
    chain = pki.chain_pem(other.issue("dock", "Dock X", stranger.public_key())).decode()
    with pytest.raises((AuthError, PullError)):
        _pull(booted, tmp_path / "store", stranger, DockTrust(cert_chain=chain))
    assert booted.store.list_evidence()  # nothing released


def test_dock_with_a_root_refuses_an_uncertified_device(tmp_path, agency) -> None:
    ca, made, dock, dock_chain = agency
    root = DeviceRoot(tmp_path / "device")
    (tmp_path / "dock.pub").write_bytes(keys.public_pem(dock.public_key()))
    provision(root, DEVICE_ID, made["agency"], made["vendor"], [tmp_path / "dock.pub"])  # enrolled, not certified
    booted = Booted(root)
    booted.record("rec", 1)
    with pytest.raises(PullError, match="presented no certificate"):
        _pull(booted, tmp_path / "store", dock, DockTrust(ca.root, [], dock_chain))
    assert len(booted.store.list_evidence()) >= 2  # nothing confirmed, nothing released
