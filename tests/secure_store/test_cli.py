"""``bodycam keys new`` and ``bodycam verify`` through the real command-line entry point."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from firmware.cli import main
from secure_store import keys


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("kind", keys.KINDS)
def test_keys_new_writes_a_private_0600_and_a_public_file(tmp_path, capsys, kind) -> None:
    code, out, _ = run(capsys, "keys", "new", kind, "--out", str(tmp_path / kind))
    assert code == 0
    key_path, pub_path = tmp_path / f"{kind}.key", tmp_path / f"{kind}.pub"
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    private, public = keys.load_private_key(key_path, kind), keys.load_public_key(pub_path, kind)
    assert keys.raw_public(private.public_key()) == keys.raw_public(public)
    assert keys.fingerprint(public) in out


def test_keys_new_refuses_overwrite_and_wrong_kind(tmp_path, capsys) -> None:
    assert run(capsys, "keys", "new", "device", "--out", str(tmp_path / "d"))[0] == 0
    before = (tmp_path / "d.key").read_bytes()
    code, _, err = run(capsys, "keys", "new", "device", "--out", str(tmp_path / "d"))
    assert code == 1 and "refusing to overwrite" in err and err.count("\n") == 1
    assert (tmp_path / "d.key").read_bytes() == before
    code, _, err = run(capsys, "keys", "new", "root", "--out", str(tmp_path / "r"))
    assert code == 2 and err == "bodycam: unknown key kind 'root' (expected one of agency, device, dock, vendor, export)\n"
    assert not list(tmp_path.glob("r.*"))
    code, _, err = run(capsys, "keys", "new", "dock", "--out", str(tmp_path / "missing" / "x"))
    assert code == 1 and "does not exist" in err and err.count("\n") == 1


@pytest.fixture
def evidence(tmp_path, keyset, h) -> Path:
    root = h.provision_root(tmp_path / "device", keyset)
    h.record(h.open_store(root, keyset), "rec-1", segments=3, chunks=2)
    shutil.rmtree(root.keys)  # a court gets evidence + identity.json, no key directory
    return root.root


def test_verify_ok_and_json(evidence, capsys) -> None:
    code, out, _ = run(capsys, "verify", str(evidence))
    assert code == 0 and out.splitlines()[-1].startswith("OK: 3 segment(s) in 1 recording(s), 1 audit log(s)")
    assert "not anchored" in out.splitlines()[-1].lower() and "identity.json beside the evidence" in out
    code, out, _ = run(capsys, "verify", str(evidence / "evidence" / "seg-0000000002.seg"), "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] and [s["seq"] for s in report["segments"]] == [2]
    assert report["segments"][0]["frames"] == 10 and report["problems"] == []


def test_verify_names_each_failure(evidence, capsys, keyset, tmp_path) -> None:
    seg = evidence / "evidence" / "seg-0000000002.seg"
    data = bytearray(seg.read_bytes())
    data[-60] ^= 1  # inside the final chunk's ciphertext
    seg.write_bytes(bytes(data))
    (evidence / "evidence" / "seg-0000000003.manifest").unlink()
    code, out, _ = run(capsys, "verify", str(evidence))
    lines = out.splitlines()
    assert code == 1 and lines[-1].startswith("FAILED: 2 segment(s)")
    assert "FAIL seg-0000000002.seg: chunk 2: ciphertext altered: SHA-256 does not match the signed manifest" in lines
    assert "FAIL seg-0000000003.seg: no manifest: segment never sealed, or its manifest removed" in lines
    code, out, _ = run(capsys, "verify", str(evidence), "--json")
    problems = json.loads(out)["problems"]
    assert code == 1 and {"file": "seg-0000000002.seg", "chunk": 2,
                          "reason": "ciphertext altered: SHA-256 does not match the signed manifest"} in problems


def test_verify_with_the_wrong_or_a_bad_device_key(evidence, capsys, keyset, tmp_path) -> None:
    other = tmp_path / "other.pub"
    other.write_bytes(keys.public_pem(keyset.other_device.public_key()))
    code, out, _ = run(capsys, "verify", str(evidence / "evidence"), "--device-pub", str(other))
    assert code == 1 and out.count("signed by another key") == 3
    agency = tmp_path / "agency.pub"
    agency.write_bytes(keys.public_pem(keyset.agency.public_key()))
    code, _, err = run(capsys, "verify", str(evidence), "--device-pub", str(agency))
    assert code == 2 and err.count("\n") == 1 and "not a device public key" in err
    code, _, err = run(capsys, "verify", str(evidence), "--device-pub", str(tmp_path / "nope.pub"))
    assert code == 2 and "not found" in err
    code, _, err = run(capsys, "verify", str(tmp_path / "no-such-dir"))
    assert code == 2 and err == f"bodycam: {tmp_path / 'no-such-dir'}: no such file or directory\n"


def test_verify_trust_and_anchor_arguments(evidence, tmp_path, capsys) -> None:
    from secure_store import pki

    ca = pki.CertificateAuthority(tmp_path / "ca")
    ca.init("Metro Police")
    code, out, _ = run(capsys, "verify", str(evidence), "--trust", str(tmp_path / "ca" / "root.pem"), "--json")
    report = json.loads(out)  # identity.json is not a trust root: no certificate here chains to the agency
    assert code == 1 and report["anchored"] is True and not report["ok"]
    assert any("no device certificate" in p["reason"] for p in report["problems"])
    code, _, err = run(capsys, "verify", str(evidence), "--trust", str(tmp_path / "ca" / "provisioning.pem"))
    assert code == 2 and "agency root" in err and err.count("\n") == 1
    code, _, err = run(capsys, "verify", str(evidence), "--anchor", "7:XYZ")
    assert code == 2 and "SEQ:DIGEST" in err and err.count("\n") == 1
    code, out, _ = run(capsys, "verify", str(evidence), "--anchor", "999:" + "0" * 64)
    assert code == 1 and "entries removed" in out
