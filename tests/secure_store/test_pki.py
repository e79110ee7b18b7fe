"""Round trips of the agency PKI: CA, certificates, revocation, verify --trust, admission and key rotation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from firmware import rootlock
from firmware.cli import main
from firmware.provision import ProvisionError, provision
from secure_store import keys, pki
from secure_store.admission import AdmissionError, DeviceTrustAnchor, admit_device
from secure_store.audit import AuditLog
from secure_store.layout import DeviceRoot
from secure_store.store import EvidenceStore
from secure_store.verify import verify_path


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> pki.CertificateAuthority:
    authority = pki.CertificateAuthority(tmp_path_factory.mktemp("ca") / "ca")
    authority.init("Metro Police")
    return authority


@pytest.fixture
def public_keys(tmp_path) -> tuple[Path, Path]:
    agency, vendor = tmp_path / "agency", tmp_path / "vendor"
    keys.write_keypair("agency", agency)
    keys.write_keypair("vendor", vendor)
    return Path(f"{agency}.pub"), Path(f"{vendor}.pub")


def boot_and_record(root: DeviceRoot, h, rec: str) -> None:
    key = keys.load_private_key(root.device_key, "device")
    device_id = json.loads(root.identity.read_text())["device_id"]
    store = EvidenceStore(root, device_id=device_id, signing_key=key, audit=AuditLog(root.audit, key, device_id),
                          agency_public_key=keys.load_public_key(root.agency_pub, "agency"), reserve_bytes=0)
    store.recover()
    h.record(store, rec, segments=2)


def test_profile_of_each_certificate(ca) -> None:
    root = ca.root
    pki.check_root(root)
    key = keys.generate("device").public_key()
    for role in pki.ROLES:
        chain = ca.issue(role, f"holder-{role}", key)
        certified = pki.check_chain(chain, root, role)
        assert certified.name == f"holder-{role}" and certified.key_fingerprint == keys.fingerprint(key)
        assert len(chain) == (3 if role in ("device", "dock") else 2)
        with pytest.raises(pki.PkiError, match="where a"):
            pki.check_chain(chain, root, "dock" if role != "dock" else "device")
    export = ca.issue("export", "Evidence Unit", key)[0]
    eku = export.extensions.get_extension_for_class(pki.x509.ExtendedKeyUsage).value
    assert pki.x509.oid.ExtendedKeyUsageOID.EMAIL_PROTECTION in eku
    other = pki.CertificateAuthority(ca.dir.parent / "other")
    other.init("Someone Else")
    with pytest.raises(pki.PkiError, match="not signed by"):
        pki.check_chain(ca.issue("device", "CAM-1", key), other.root, "device")


def test_revocation_reaches_the_chain_check(ca) -> None:
    chain = ca.issue("dock", "Dock 7", keys.generate("dock").public_key())
    crl_path = ca.revoke(chain[0])
    with pytest.raises(pki.PkiError, match="revoked on"):
        pki.check_chain(chain, ca.root, "dock", pki.read_crls([crl_path]))
    still = ca.issue("dock", "Dock 8", keys.generate("dock").public_key())
    assert pki.check_chain(still, ca.root, "dock", pki.read_crls([crl_path])).name == "Dock 8"


def test_ca_cli(tmp_path, capsys) -> None:
    assert main(["ca", "init", str(tmp_path / "ca"), "--org", "Metro Police"]) == 0
    keys.write_keypair("dock", tmp_path / "dock")
    out = tmp_path / "dock.pem"
    args = ["ca", "issue", "dock", "Dock 1", "--pub", str(tmp_path / "dock.pub"), "--ca", str(tmp_path / "ca")]
    assert main([*args, "--out", str(out)]) == 0
    chain = pki.read_certs(out)
    assert pki.check_chain(chain, pki.read_certs(tmp_path / "ca" / "root.pem")[0], "dock").name == "Dock 1"
    assert main([*args, "--out", str(out)]) == 2  # never overwritten
    assert main(["ca", "issue", "mayor", "x", "--pub", str(tmp_path / "dock.pub"), "--ca", str(tmp_path / "ca"),
                 "--out", str(tmp_path / "x.pem")]) == 2
    assert main(["ca", "revoke", str(out), "--ca", str(tmp_path / "ca")]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "Traceback" not in err


def test_verify_with_the_agency_root_through_a_re_provisioning(tmp_path, ca, public_keys, h) -> None:
    root = DeviceRoot(tmp_path / "device")
    provision(root, "CAM-0042", *public_keys, ca=ca.dir)
    boot_and_record(root, h, "before")
    provision(root, "CAM-0042", *public_keys, force=True, ca=ca.dir)
    boot_and_record(root, h, "after")
    assert len(list((root.root / "certs").glob("device-*.pem"))) == 2  # the retired key's certificate is kept
    report = verify_path(root.root, trust_root=ca.root)
    assert report.ok and report.anchored, [str(p) for p in report.problems]
    assert sorted(s.manifest.segment_seq for s in report.segments) == [1, 2, 3, 4]
    assert len({s.device_key_fp for s in report.segments}) == 2

    court = tmp_path / "court"  # identity.json replaced, certificates removed: nothing anchors the keys
    shutil.copytree(root.root, court, ignore=shutil.ignore_patterns("keys", "certs"))
    found = verify_path(court, trust_root=ca.root)
    assert not found.ok and any("no device certificate" in p.reason for p in found.problems)

    crl = ca.revoke(pki.read_certs(sorted((root.root / "certs").glob("device-*.pem"))[0])[0])
    revoked = verify_path(root.root, trust_root=ca.root, crls=pki.read_crls([crl]))
    assert not revoked.ok


def test_uncertified_key_fails_under_the_root(tmp_path, ca, public_keys, h, keyset) -> None:
    root = DeviceRoot(tmp_path / "device")
    provision(root, "CAM-0042", *public_keys)  # no --ca: nothing certifies this key
    boot_and_record(root, h, "rec")
    assert verify_path(root.root).ok
    report = verify_path(root.root, trust_root=ca.root)
    assert not report.ok and report.to_json()["anchored"] is True
    assert any("no device certificate in certs/ chains" in p.reason for p in report.problems)


def test_provisioning_refuses_while_the_daemon_holds_the_root(tmp_path, ca, public_keys) -> None:
    root = DeviceRoot(tmp_path / "device")
    provision(root, "CAM-0042", *public_keys, ca=ca.dir)
    before = root.device_key.read_bytes()
    with rootlock.acquire(root.root):
        with pytest.raises(ProvisionError, match="in use"):
            provision(root, "CAM-0042", *public_keys, force=True, ca=ca.dir)
    assert root.device_key.read_bytes() == before
    provision(root, "CAM-0042", *public_keys, force=True, ca=ca.dir)  # once the daemon stopped
    assert root.device_key.read_bytes() != before


def test_dock_admits_certified_devices_and_follows_a_certified_rotation(tmp_path, ca) -> None:
    old, new, stranger = (keys.generate("device") for _ in range(3))
    old_chain = pki.chain_pem(ca.issue("device", "CAM-7", old.public_key())).decode()
    new_chain = pki.chain_pem(ca.issue("device", "CAM-7", new.public_key())).decode()
    d = tmp_path / "store" / "CAM-7"
    with pytest.raises(AdmissionError, match="no certificate"):
        admit_device(d, "CAM-7", old.public_key(), "", ca.root)
    fp = admit_device(d, "CAM-7", old.public_key(), old_chain, ca.root)
    assert fp == pki.cert_fingerprint(pki.load_certs(old_chain.encode(), "x")[0])
    with pytest.raises(AdmissionError, match="another key"):
        admit_device(d, "CAM-7", stranger.public_key(), old_chain, ca.root)
    admit_device(d, "CAM-7", new.public_key(), new_chain, ca.root)  # followed by itself
    identity = json.loads((d / "identity.json").read_text())
    assert identity["fingerprint"] == keys.fingerprint(new.public_key())
    assert identity["retired_device_keys"] == [keys.fingerprint(old.public_key())]
    assert (d / "keys" / "retired" / f"device-{keys.fingerprint(old.public_key())[:16]}.pub").exists()


def test_dock_without_root_refuses_a_new_key_unless_told(tmp_path) -> None:
    old, new = keys.generate("device"), keys.generate("device")
    d = tmp_path / "CAM-8"
    admit_device(d, "CAM-8", old.public_key(), "")
    with pytest.raises(AdmissionError, match="--accept-new-key"):
        admit_device(d, "CAM-8", new.public_key(), "")
    admit_device(d, "CAM-8", new.public_key(), "", accept_new_key=True)
    assert json.loads((d / "identity.json").read_text())["retired_device_keys"] == [keys.fingerprint(old.public_key())]


def test_device_admits_docks_of_its_agency_and_takes_their_crls(tmp_path, ca, public_keys) -> None:
    root = DeviceRoot(tmp_path / "device")
    provision(root, "CAM-0042", *public_keys, ca=ca.dir)
    anchor = DeviceTrustAnchor(root.root, keys.load_private_key(root.device_key, "device").public_key())
    assert "BEGIN CERTIFICATE" in anchor.chain_pem
    dock = keys.generate("dock")
    chain = ca.issue("dock", "Dock 9", dock.public_key())
    raw = keys.raw_public(dock.public_key())
    assert anchor.admit_dock(raw, pki.chain_pem(chain).decode()) is not None
    assert anchor.admit_dock(keys.raw_public(keys.generate("dock").public_key()), pki.chain_pem(chain).decode()) is None
    crl = ca.revoke(chain[0])
    assert anchor.install_crl(crl.read_bytes()) == "provisioning.crl.pem"
    assert anchor.admit_dock(raw, pki.chain_pem(chain).decode()) is None  # revoked, through the dock's CRL
    other = pki.CertificateAuthority(tmp_path / "other")
    other.init("Someone Else")
    with pytest.raises(AdmissionError, match="not signed by this device's agency"):
        anchor.install_crl((other.dir / "root.crl.pem").read_bytes())


def test_re_provisioning_under_a_new_device_id_still_verifies(tmp_path, ca, public_keys, h) -> None:
    root = DeviceRoot(tmp_path / "device")
    provision(root, "CAM-0042", *public_keys, ca=ca.dir)
    boot_and_record(root, h, "before")
    provision(root, "CAM-0099", *public_keys, force=True, ca=ca.dir)  # the hand-over names the new ID
    boot_and_record(root, h, "after")
    for kw in ({}, {"trust_root": ca.root}):
        report = verify_path(root.root, **kw)
        assert report.ok, [str(p) for p in report.problems]
        assert [s.manifest.device_id for s in sorted(report.segments, key=lambda s: s.manifest.segment_seq)] == [
            "CAM-0042", "CAM-0042", "CAM-0099", "CAM-0099"]
