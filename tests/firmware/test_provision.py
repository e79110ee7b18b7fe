"""Provisioning: key modes, trusted keys of the right kind, identity, clock, --force keeps evidence."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest

from firmware.cli import main
from firmware.offload import OffsetClock
from firmware.provision import ProvisionError, enroll_dock, load_identity, provision
from secure_store import keys
from secure_store.audit import Event, read_entries
from secure_store.audit_verify import verify_audit
from secure_store.layout import DeviceRoot


@pytest.fixture()
def trusted(tmp_path):
    """Public key files a technician brings: agency, vendor, two docks."""
    for kind, name in (("agency", "agency"), ("vendor", "vendor"), ("dock", "dock1"), ("dock", "dock2")):
        keys.write_keypair(kind, tmp_path / name)
    return tmp_path


def _provision(trusted, root, **kw):
    return provision(root, kw.pop("device_id", "CAM-0042"), trusted / "agency.pub", trusted / "vendor.pub",
                     kw.pop("dock_pubs", [trusted / "dock1.pub"]), **kw)


def _fp(path, kind):
    return keys.fingerprint(keys.load_public_key(path, kind))


def test_provision_creates_key_0600_trusted_keys_identity_and_clock(trusted):
    root = DeviceRoot(trusted / "dev")
    identity = _provision(trusted, root, reference_utc=1_800_000_000.0, clock=lambda: 1_799_999_998.5)
    assert stat.S_IMODE(os.stat(root.device_key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(root.keys).st_mode) == 0o700
    device_key = keys.load_private_key(root.device_key, "device")
    assert keys.fingerprint(device_key.public_key()) == identity.fingerprint == _fp(root.device_pub, "device")
    assert root.agency_pub.read_bytes() == (trusted / "agency.pub").read_bytes()
    assert root.vendor_pub.read_bytes() == (trusted / "vendor.pub").read_bytes()
    dock_fp = _fp(trusted / "dock1.pub", "dock")
    assert (root.docks / f"{dock_fp[:16]}.pub").read_bytes() == (trusted / "dock1.pub").read_bytes()
    doc = json.loads(root.identity.read_bytes())
    assert doc["device_id"] == "CAM-0042" and doc["fingerprint"] == identity.fingerprint
    assert bytes.fromhex(doc["public_key"]) == keys.raw_public(device_key.public_key())
    assert doc["public_key_pem"] == root.device_pub.read_text()
    clock = json.loads((root.state / "clock.json").read_bytes())
    assert clock["offset_us"] == 1_500_000 and clock["source"] == "provision"
    assert OffsetClock(root.state / "clock.json", base=lambda: 100.0)() == 101.5  # the daemon's clock reads it
    events = [(e.event, e.details) for e in read_entries(root.audit)]
    assert [e for e, _ in events] == [Event.PROVISION, Event.CLOCK_SET]
    assert events[0][1]["device_key"] == identity.fingerprint and events[0][1]["docks"] == [dock_fp]
    assert events[1][1]["offset_us"] == 1_500_000
    assert verify_audit(root.audit, device_key.public_key(), device_id="CAM-0042") == []


@pytest.mark.parametrize("role, wrong, reason", [
    ("agency", "vendor.pub", "not a agency public key"),
    ("vendor", "agency.pub", "not a vendor public key"),
    ("dock", "agency.pub", "not a dock public key"),
    ("dock", "vendor.pub", "is the vendor key"),
    ("vendor", "vendor.key", "not a PEM public key"),
    ("agency", "missing.pub", "not found"),
])
def test_wrong_kind_of_key_is_refused_in_one_line_and_nothing_is_written(trusted, role, wrong, reason):
    root = DeviceRoot(trusted / "dev")
    args = {"agency": trusted / "agency.pub", "vendor": trusted / "vendor.pub", "dock": trusted / "dock1.pub"}
    args[role] = trusted / wrong
    with pytest.raises(ProvisionError, match=reason) as info:
        provision(root, "CAM-1", args["agency"], args["vendor"], [args["dock"]])
    assert "\n" not in str(info.value)
    assert not root.root.exists()


def test_bad_device_id_refused(trusted):
    for bad in ("", "../x", "CAM 1", "-x", "x" * 65, "CAMÉ"):
        with pytest.raises(ProvisionError, match="device ID"):
            _provision(trusted, DeviceRoot(trusted / "dev"), device_id=bad)


def test_second_provision_needs_force_and_changes_nothing(trusted):
    root = DeviceRoot(trusted / "dev")
    _provision(trusted, root)
    snapshot = {p: p.read_bytes() for p in root.root.rglob("*") if p.is_file()}
    with pytest.raises(ProvisionError, match="--force"):
        _provision(trusted, root, device_id="CAM-9999")
    assert {p: p.read_bytes() for p in root.root.rglob("*") if p.is_file()} == snapshot


def test_force_reprovision_keeps_evidence_and_audit_and_retires_old_keys(trusted):
    root = DeviceRoot(trusted / "dev")
    first = _provision(trusted, root)
    old_pub = keys.load_public_key(root.device_pub, "device")
    (root.evidence / "rec1").mkdir()
    evidence = {"rec1/seg-0.bcseg": os.urandom(3000), "rec1/seg-0.manifest": b"signed manifest"}
    for rel, data in evidence.items():
        (root.evidence / rel).write_bytes(data)
    audit_file = next(root.audit.glob("audit-*.log"))
    audit_before = audit_file.read_bytes()
    keys.write_keypair("agency", trusted / "agency2")
    second = provision(root, "CAM-0043", trusted / "agency2.pub", trusted / "vendor.pub", [trusted / "dock2.pub"],
                       force=True)
    assert second.fingerprint != first.fingerprint
    for rel, data in evidence.items():
        assert (root.evidence / rel).read_bytes() == data
    assert audit_file.read_bytes().startswith(audit_before)  # appended to, never rewritten
    retired = root.keys / "retired"
    assert (retired / f"device-{first.fingerprint[:16]}.pub").read_bytes() == keys.public_pem(old_pub)
    old_agency = _fp(trusted / "agency.pub", "agency")
    assert (retired / f"agency-{old_agency[:16]}.pub").exists()
    assert root.agency_pub.read_bytes() == (trusted / "agency2.pub").read_bytes()
    assert len(list(root.docks.glob("*.pub"))) == 2  # enrolled docks stay enrolled
    assert load_identity(root)["retired_device_keys"] == [first.fingerprint]
    assert stat.S_IMODE(os.stat(root.device_key).st_mode) == 0o600

    entries = read_entries(root.audit)
    handover = [e for e in entries if e.details.get("action") == "reprovision_begin"]
    assert len(handover) == 1 and handover[0].device == "CAM-0042"
    assert handover[0].details["device_key"] == second.fingerprint  # the old key vouches for the new one
    cut = handover[0].seq
    # entries up to the hand-over verify with the old key, the rest with the new one
    old_problems = verify_audit(root.audit, old_pub)
    assert old_problems and all(f"entry {e.seq} " in " ".join(old_problems) for e in entries if e.seq > cut)
    assert not any(f"entry {e.seq} " in p and "bad signature" in p for p in old_problems for e in entries if e.seq <= cut)
    new_problems = verify_audit(root.audit, keys.load_public_key(root.device_pub, "device"))
    assert not any(f"entry {e.seq} " in p and "bad signature" in p for p in new_problems for e in entries if e.seq > cut)
    new_pub = keys.load_public_key(root.device_pub, "device")
    assert verify_audit(root.audit, [old_pub, new_pub]) == []  # the verifier follows the signed hand-over
    assert verify_audit(root.audit, [new_pub])  # without the retired key, the old entries are unverifiable
    assert [e.details.get("action") for e in entries if e.event == Event.PROVISION] == \
        ["provision", "reprovision_begin", "reprovision"]


def test_reprovisioning_that_dies_after_the_hand_over_resumes_with_the_same_key(trusted, monkeypatch):
    import firmware.provision as prov

    root = DeviceRoot(trusted / "dev")
    first = _provision(trusted, root)
    old_pub = keys.load_public_key(root.device_pub, "device")

    def power_cut(*args):
        raise OSError("power cut")

    monkeypatch.setattr(prov, "_retire", power_cut)
    with pytest.raises(OSError):
        _provision(trusted, root, force=True)
    assert keys.fingerprint(keys.load_public_key(root.device_pub, "device")) == first.fingerprint  # not switched
    assert stat.S_IMODE(os.stat(root.keys / "device.key.next").st_mode) == 0o600
    monkeypatch.undo()
    second = _provision(trusted, root, force=True)
    handovers = [e.details["device_key"] for e in read_entries(root.audit)
                 if e.details.get("action") == "reprovision_begin"]
    assert handovers == [second.fingerprint]  # one hand-over, to the key that really took over
    assert not (root.keys / "device.key.next").exists()
    assert verify_audit(root.audit, [old_pub, keys.load_public_key(root.device_pub, "device")]) == []


def test_enroll_dock_later(trusted):
    root = DeviceRoot(trusted / "dev")
    with pytest.raises(ProvisionError, match="not provisioned"):
        enroll_dock(root, trusted / "dock2.pub")
    _provision(trusted, root)
    fp, new = enroll_dock(root, trusted / "dock2.pub")
    assert new and (root.docks / f"{fp[:16]}.pub").read_bytes() == (trusted / "dock2.pub").read_bytes()
    assert enroll_dock(root, trusted / "dock2.pub") == (fp, False)
    with pytest.raises(ProvisionError, match="wants a dock's Ed25519 public key: .*not a dock public key"):
        enroll_dock(root, trusted / "agency.pub")
    with pytest.raises(ProvisionError, match="vendor key"):
        enroll_dock(root, trusted / "vendor.pub")
    enrolled = [e.details for e in read_entries(root.audit) if e.event == Event.DOCK_ENROLLED]
    assert enrolled == [{"dock_key": fp, "file": f"{fp[:16]}.pub"}]


def test_cli_provision(trusted, capsys):
    root = trusted / "dev"
    base = ["provision", "--root", str(root), "--device-id", "CAM-5", "--agency-pub", str(trusted / "agency.pub"),
            "--vendor-pub", str(trusted / "vendor.pub")]
    assert main(base + ["--dock-pub", str(trusted / "dock1.pub"), "--dock-pub", str(trusted / "dock2.pub")]) == 0
    assert "CAM-5 provisioned" in capsys.readouterr().out
    assert len(list((root / "keys/docks").glob("*.pub"))) == 2
    assert main(base) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--force" in err[0]
    assert main(base + ["--force"]) == 0
    capsys.readouterr()
    assert main(["provision", "--root", str(root), "--device-id", "X"]) == 2
    assert "--agency-pub, --vendor-pub required" in capsys.readouterr().err
    assert main(["provision", "--root", str(root), "--enroll-dock", str(trusted / "dock1.pub")]) == 0
    assert "already enrolled" in capsys.readouterr().out
    digest = hashlib.sha256((root / "keys/device.pub").read_bytes()).hexdigest()
    assert main(["provision", "--root", str(root), "--enroll-dock", str(trusted / "vendor.key")]) == 1
    assert hashlib.sha256((root / "keys/device.pub").read_bytes()).hexdigest() == digest
