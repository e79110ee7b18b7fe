"""Provisioning a hybrid device: a hybrid agency key gives the device an Ed25519 + ML-DSA-65 key,
certified by both hierarchies; rotation classic -> hybrid and hybrid -> hybrid keeps every key verifiable."""

from __future__ import annotations

import json
import os
import stat

import pytest

from firmware.cli import main
from firmware.provision import ProvisionError, provision
from secure_store import hybrid, keys, pki
from secure_store.audit import AuditLog
from secure_store.audit_verify import verify_audit
from secure_store.layout import DeviceRoot
from secure_store.store import EvidenceStore
from secure_store.trust import resolve_trust
from secure_store.verify import verify_path


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> pki.CertificateAuthority:
    authority = pki.CertificateAuthority(tmp_path_factory.mktemp("ca") / "ca")
    authority.init("Metro Police", pq=True)
    return authority


@pytest.fixture
def trusted(tmp_path):
    """What a technician of a hybrid agency brings: hybrid agency, vendor and dock keys, and a classic agency key."""
    for kind, name, pq in (("agency", "agency", True), ("agency", "classic-agency", False),
                           ("vendor", "vendor", True), ("dock", "dock", True)):
        keys.write_keypair(kind, tmp_path / name, pq=pq)
    return tmp_path


def _provision(trusted, root, agency="agency", **kw):
    return provision(root, "CAM-0042", trusted / f"{agency}.pub", trusted / "vendor.pub", [trusted / "dock.pub"],
                     **kw)


def _record(root: DeviceRoot, h, rec: str) -> None:
    key = keys.load_signing_key(root.device_key, "device")
    signer = key if key.hybrid else key.ed25519
    store = EvidenceStore(root, device_id="CAM-0042", signing_key=signer,
                          audit=AuditLog(root.audit, signer, "CAM-0042"),
                          agency_public_key=keys.load_public_key(root.agency_pub, "agency"), reserve_bytes=0)
    store.recover()
    h.record(store, rec, segments=2)


def test_hybrid_agency_key_gives_a_hybrid_device_key_certified_twice(trusted, ca):
    root = DeviceRoot(trusted / "dev")
    identity = _provision(trusted, root, ca=ca.dir)
    assert stat.S_IMODE(os.stat(root.device_key).st_mode) == 0o600
    device = keys.load_signing_key(root.device_key, "device")
    assert device.hybrid and root.device_key.read_bytes().count(b"BEGIN PRIVATE KEY") == 2
    public = keys.load_verify_key(root.device_pub, "device")
    assert public.pem() == device.public_key().pem() and identity.fingerprint == keys.fingerprint(public)
    doc = json.loads(root.identity.read_bytes())
    assert doc["public_key_pem"] == root.device_pub.read_text() and doc["fingerprint"] == identity.fingerprint
    assert bytes.fromhex(doc["public_key"]) == device.ed25519.public_key().public_bytes_raw()
    chain = pki.read_certs(root.root / "certs" / f"device-{identity.fingerprint[:16]}.pem")
    assert len(chain) == 6
    assert (root.keys / "agency-root.pem").read_bytes() == ca.roots.pem()  # both roots on the device
    assert keys.load_verify_key(root.vendor_pub, "vendor").hybrid  # a hybrid vendor key, both halves kept
    dock_fp = keys.fingerprint(keys.load_verify_key(trusted / "dock.pub", "dock"))
    enrolled = (root.docks / f"{dock_fp[:16]}.pub").read_bytes()  # the link meets docks with Ed25519 only
    assert enrolled == keys.public_pem(keys.load_verify_key(trusted / "dock.pub", "dock").ed25519)
    trust = resolve_trust(root.root, root=pki.read_roots(root.keys / "agency-root.pem"))
    assert [k.pem() for k in trust.keys] == [public.pem()] and trust.to_json()["signatures"] == "ed25519+mldsa65"
    assert verify_audit(root.audit, [public], device_id="CAM-0042") == []


def test_classic_agency_key_stays_classic_unless_told(trusted, ca):
    classic = DeviceRoot(trusted / "classic")
    _provision(trusted, classic, agency="classic-agency", ca=ca.dir)
    assert not keys.load_signing_key(classic.device_key, "device").hybrid
    assert classic.device_pub.read_bytes().count(b"BEGIN PUBLIC KEY") == 1
    assert len(pki.read_certs(next((classic.root / "certs").glob("device-*.pem")))) == 3
    told = DeviceRoot(trusted / "told")
    _provision(trusted, told, agency="classic-agency", pq=True)
    assert keys.load_signing_key(told.device_key, "device").hybrid
    forced_classic = DeviceRoot(trusted / "forced")
    _provision(trusted, forced_classic, pq=False)
    assert not keys.load_signing_key(forced_classic.device_key, "device").hybrid


def test_a_classic_ca_refuses_a_hybrid_device_before_anything_is_written(trusted, tmp_path):
    classic_ca = pki.CertificateAuthority(tmp_path / "classic-ca")
    classic_ca.init("Metro Police")
    root = DeviceRoot(trusted / "dev")
    with pytest.raises(ProvisionError, match="no ML-DSA-65 hierarchy"):
        _provision(trusted, root, ca=classic_ca.dir)
    assert not root.device_key.exists() and not root.identity.exists()


def test_rotation_classic_to_hybrid_to_hybrid_verifies_against_both_roots(trusted, ca, h):
    root = DeviceRoot(trusted / "dev")
    _provision(trusted, root, agency="classic-agency", ca=ca.dir)
    _record(root, h, "classic")
    _provision(trusted, root, ca=ca.dir, force=True)   # the agency moved to a hybrid key
    _record(root, h, "hybrid-1")
    _provision(trusted, root, ca=ca.dir, force=True)   # and re-provisions later
    _record(root, h, "hybrid-2")
    assert len(list((root.root / "certs").glob("device-*.pem"))) == 3
    trust = resolve_trust(root.root, root=ca.roots)
    assert sorted(k.hybrid for k in trust.keys) == [False, True, True] and trust.to_json()["signatures"] == "mixed"
    report = verify_path(root.root, trust_root=ca.roots)
    assert report.ok and report.anchored, [str(p) for p in report.problems]
    assert sorted(s.manifest.segment_seq for s in report.segments) == [1, 2, 3, 4, 5, 6]
    assert len({s.device_key_fp for s in report.segments}) == 3
    # the Ed25519 root alone cannot check the ML-DSA-65 signatures the hybrid keys made
    assert not verify_path(root.root, trust_root=ca.root).ok
    # each hand-over to a hybrid key names its ML-DSA-65 half in the entry the old key signed
    from secure_store.audit import read_entries
    handovers = [e.details for e in read_entries(root.audit) if e.details.get("action") == "reprovision_begin"]
    hybrid_keys = {k.fingerprint(): k.mldsa65_fingerprint() for k in trust.keys if k.hybrid}
    assert len(handovers) == 2 and all(d["device_key_mldsa65"] == hybrid_keys[d["device_key"]] for d in handovers)


def test_verify_cli_says_what_the_keys_sign_with(trusted, ca, h, capsys):
    root = DeviceRoot(trusted / "dev")
    _provision(trusted, root, ca=ca.dir)
    _record(root, h, "hybrid")
    roots_file = ca.path(pki.TRUST_ROOTS)
    capsys.readouterr()
    assert main(["verify", str(root.root), "--trust", str(roots_file), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (trust,) = report["trust"].values()
    assert trust["signatures"] == "ed25519+mldsa65" and trust["anchored"] is True
    assert trust["root_mldsa65_sha256"] == pki.cert_fingerprint(ca.roots.mldsa65)
    assert main(["verify", str(root.root), "--trust", str(roots_file)]) == 0
    assert "signatures ed25519+mldsa65" in capsys.readouterr().out
    # the companion certificate stripped from certs/: the key looks classic, and its hybrid evidence fails
    chain_file = next((root.root / "certs").glob("device-*.pem"))
    chain_file.write_bytes(pki.chain_pem(pki.read_certs(chain_file)[:3]))
    assert main(["verify", str(root.root), "--trust", str(roots_file)]) == 1
    out = capsys.readouterr().out
    assert "Ed25519 alone" in out and "FAIL" in out


def test_provision_cli_chooses_the_device_key_kind(trusted, ca, capsys):
    base = ["provision", "--device-id", "CAM-0042", "--vendor-pub", str(trusted / "vendor.pub"), "--ca", str(ca.dir)]
    assert main([*base, "--root", str(trusted / "a"), "--agency-pub", str(trusted / "agency.pub")]) == 0
    assert "(Ed25519 + ML-DSA-65)" in capsys.readouterr().out
    assert keys.load_signing_key(trusted / "a" / "keys" / "device.key", "device").hybrid
    assert main([*base, "--root", str(trusted / "b"), "--agency-pub", str(trusted / "agency.pub"), "--classic"]) == 0
    assert "(Ed25519)" in capsys.readouterr().out
    assert not keys.load_signing_key(trusted / "b" / "keys" / "device.key", "device").hybrid
    assert main([*base, "--root", str(trusted / "c"), "--agency-pub", str(trusted / "classic-agency.pub"),
                 "--pq"]) == 0
    assert keys.load_signing_key(trusted / "c" / "keys" / "device.key", "device").hybrid
    capsys.readouterr()
    with pytest.raises(SystemExit) as usage:
        main([*base, "--root", str(trusted / "d"), "--agency-pub", str(trusted / "agency.pub"), "--pq", "--classic"])
    assert usage.value.code == 2 and not (trusted / "d").exists()
