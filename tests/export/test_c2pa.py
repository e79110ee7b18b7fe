"""Signed exports: C2PA manifests that a reader trusts under the agency root, and that break on any change."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import pytest

from export.exporter import export_evidence
from export.mp4 import box_order
from export.provenance import ExportSigner, SignerError, check_mp4
from firmware.cli import main
from secure_store import keys
from secure_store.pki import CertificateAuthority, chain_pem


@pytest.fixture(scope="module")
def signed(recorded, pki, tmp_path_factory):
    device, pulled, _ = recorded
    out = tmp_path_factory.mktemp("signed")
    result = export_evidence(pulled, device.agency_key, out, signer=ExportSigner.from_files(pki.chain, pki.key),
                             trust_root=pki.root_pem.read_bytes())
    return result, out


def test_signed_mp4_is_trusted_under_the_agency_root(signed, pki) -> None:
    result, _ = signed
    rec1 = result.recordings[0]
    check = check_mp4(rec1.mp4, pki.root_pem.read_text())
    assert check.state == "Trusted" and check.trusted and check.failures == []
    assert "Test Agency Evidence Export" in check.signer
    report = json.loads(rec1.report.read_text())
    assert report["c2pa"]["signed"] is True and report["c2pa"]["check"] == "Trusted"
    assert "CN=Test Agency Root" in report["c2pa"]["trust_root"]["subject"]
    # What it asserts: the device, each sealed segment by its manifest digest, span, clock, markers.
    evidence = check.evidence
    assert evidence["device"]["device_id"] == "CAM-0042"
    assert evidence["device"]["device_key_sha256"] == report["device_key_sha256"]
    assert [s["manifest_sha256"] for s in evidence["segments"]] == [s["manifest_sha256"] for s in report["segments"]]
    assert [i["instance_id"] for i in check.ingredients] == [
        f"bodycam:manifest-sha256:{s['manifest_sha256']}" for s in report["segments"]]
    assert (evidence["start_utc"], evidence["end_utc"]) == (report["start_utc"], report["end_utc"])
    assert {c["source"] for c in evidence["clock"]} == set(report["clock"]["sources"])
    assert [(m["label"], m["offset_s"]) for m in evidence["markers"]] == [("door opened", 0.4), ("arrest", 2.2)]
    assert evidence["remuxed_not_reencoded"] is True and evidence["partial"] is False


def test_one_changed_byte_breaks_it(signed, pki, tmp_path: Path, capsys) -> None:
    result, _ = signed
    original = result.recordings[0].mp4
    data = bytearray(original.read_bytes())
    offset = data.index(b"mdat") + 200  # one bit of the video itself
    data[offset] ^= 0x01
    tampered = tmp_path / original.name
    tampered.write_bytes(bytes(data))
    check = check_mp4(tampered, pki.root_pem.read_text())
    assert check.state == "Invalid" and any("bmffHash.mismatch" in f for f in check.failures)
    assert main(["export-check", str(tampered), "--trust-root", str(pki.root_pem)]) == 1
    assert "C2PA Invalid" in capsys.readouterr().out
    assert main(["export-check", str(original), "--trust-root", str(pki.root_pem)]) == 0
    assert "C2PA Trusted" in capsys.readouterr().out


def test_another_root_does_not_trust_it(signed, tmp_path: Path, make_pki) -> None:
    other = make_pki(tmp_path / "other", "Some Other Agency Root")
    check = check_mp4(signed[0].recordings[0].mp4, other.root_pem.read_text())
    assert check.state == "Valid" and not check.trusted  # sound signature, not under this root


def test_fast_start_box_order_and_chapters_are_the_markers(signed) -> None:
    result, _ = signed
    rec1, rec2 = result.recordings
    boxes = box_order(rec1.mp4)
    assert boxes[:2] == ["ftyp", "uuid"] and boxes.index("moov") < boxes.index("mdat")  # C2PA box, then moov first
    with av.open(str(rec1.mp4)) as container:
        chapters = container.chapters()
    report = json.loads(rec1.report.read_text())
    assert [c["metadata"]["title"] for c in chapters] == ["start"] + [m["label"] for m in report["markers"]]
    assert [float(c["start"] * c["time_base"]) for c in chapters] == pytest.approx(
        [0.0] + [m["offset_s"] for m in report["markers"]], abs=1e-3)
    end = float(chapters[-1]["end"] * chapters[-1]["time_base"])
    assert end == pytest.approx(report["mp4"]["duration_s"], abs=1e-3)
    with av.open(str(rec2.mp4)) as container:
        assert container.chapters() == []


def test_unsigned_export_says_so(recorded, tmp_path: Path, capsys) -> None:
    device, pulled, agency = recorded
    assert main(["export", str(pulled), "--agency-key", str(agency), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "not signed" in captured.err and "unsigned" in captured.out
    mp4 = tmp_path / "out" / "CAM-0042_rec-1.mp4"
    assert check_mp4(mp4).state == "absent"
    report = json.loads(mp4.with_suffix(".json").read_text())
    assert report["c2pa"]["signed"] is False
    assert "The MP4 is not signed" in mp4.with_suffix(".html").read_text()


def test_cli_signs_with_chain_and_key(recorded, pki, tmp_path: Path, capsys) -> None:
    device, pulled, agency = recorded
    segment = sorted(pulled.glob("seg-*.seg"))[-1]  # rec-2's only segment: fast
    base = ["export", str(segment), "--agency-key", str(agency), "--trust-root", str(pki.root_pem)]
    args = base + ["--out", str(tmp_path / "out"), "--export-cert", str(pki.chain), "--export-key", str(pki.key)]
    assert main(args) == 0
    assert "C2PA-signed" in capsys.readouterr().out
    (mp4,) = (tmp_path / "out").glob("*.mp4")
    assert check_mp4(mp4, pki.root_pem.read_text()).trusted
    # usage and key mistakes: one line, no traceback
    assert main(base + ["--out", str(tmp_path / "o2"), "--export-cert", str(pki.chain)]) == 2  # no --export-key
    assert "go together" in capsys.readouterr().err
    wrong = tmp_path / "wrong.key"
    shutil.copyfile(pki.chain, wrong)
    assert main(base + ["--out", str(tmp_path / "o3"), "--export-cert", str(pki.chain),
                        "--export-key", str(wrong)]) == 1
    assert "not an unencrypted PEM private key" in capsys.readouterr().err


def test_key_must_match_the_certificate(pki, tmp_path: Path, make_pki) -> None:
    other = make_pki(tmp_path / "other")
    with pytest.raises(SignerError, match="does not match"):
        ExportSigner.from_files(pki.chain, other.key)


def test_a_signature_the_given_root_does_not_trust_never_lands(recorded, pki, make_pki, tmp_path: Path) -> None:
    device, pulled, _ = recorded
    other = make_pki(tmp_path / "other", "Some Other Agency Root")
    segment = sorted(pulled.glob("seg-*.seg"))[-1]
    result = export_evidence(segment, device.agency_key, tmp_path / "out",
                             signer=ExportSigner.from_files(pki.chain, pki.key),
                             trust_root=other.root_pem.read_bytes())
    assert result.recordings == [] and len(result.skipped) == 1
    assert "reads Valid right after signing" in result.skipped[0].reason
    assert list((tmp_path / "out").iterdir()) == []  # no MP4, no partial file, no report


def test_export_check_bad_inputs_get_one_line(signed, pki, tmp_path: Path, capsys) -> None:
    mp4 = signed[0].recordings[0].mp4
    not_pem = tmp_path / "root.txt"
    not_pem.write_text("not a certificate\n")
    assert main(["export-check", str(mp4), "--trust-root", str(not_pem)]) == 1
    assert capsys.readouterr().err.strip() == "bodycam: trust root: not a PEM certificate c2pa accepts"
    assert main(["export-check", str(tmp_path / "none.mp4"), "--trust-root", str(pki.root_pem)]) == 2
    assert main(["export-check", str(not_pem), "--trust-root", str(pki.root_pem)]) == 1  # not an MP4 at all
    assert "Traceback" not in capsys.readouterr().err


def test_export_output_mistakes_get_one_line(recorded, tmp_path: Path, capsys) -> None:
    _, pulled, agency = recorded
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for out, expect in [(a_file, "exists and is not a directory"), (tmp_path / "typo" / "out", "no such directory")]:
        assert main(["export", str(pulled), "--agency-key", str(agency), "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert expect in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("kind", ["issued by the root itself", "ES256"])
def test_other_export_certificates(recorded, make_pki, tmp_path: Path, kind: str) -> None:
    device, pulled, _ = recorded
    flat = make_pki(tmp_path / "flat", intermediate=kind != "issued by the root itself", es256=kind == "ES256")
    segment = sorted(pulled.glob("seg-*.seg"))[-1]
    (rec,) = export_evidence(segment, device.agency_key, tmp_path / "out",
                             signer=ExportSigner.from_files(flat.chain, flat.key),
                             trust_root=flat.root_pem.read_bytes()).recordings
    assert check_mp4(rec.mp4, flat.root_pem.read_text()).trusted


def test_a_device_certificate_beside_the_evidence_is_named(recorded, pki, tmp_path: Path) -> None:
    device, pulled, _ = recorded
    evidence = tmp_path / "copy"  # a flat copy: certs/ and device.pub beside the segments
    shutil.copytree(pulled, evidence)
    (evidence / "certs").mkdir()
    agency = CertificateAuthority(tmp_path / "ca")  # the agency PKI's own CA: a certificate verify accepts
    agency.init("Test Constabulary")
    name = f"device-{keys.fingerprint(device.signing_key.public_key())[:16]}.pem"
    (evidence / "certs" / name).write_bytes(
        chain_pem(agency.issue("device", "CAM-0042", device.signing_key.public_key())))
    segment = sorted(evidence.glob("seg-*.seg"))[-1]
    (rec,) = export_evidence(segment, device.agency_key, tmp_path / "out",
                             signer=ExportSigner.from_files(pki.chain, pki.key)).recordings
    report = json.loads(rec.report.read_text())
    cert = report["device_certificate"]
    assert cert["file"] == f"certs/{name}" and "CN=CAM-0042" in cert["subject"]
    check = check_mp4(rec.mp4, pki.root_pem.read_text())
    assert check.trusted and check.evidence["device"]["device_certificate"]["sha256"] == cert["sha256"]
    assert cert["sha256"] in rec.html.read_text()
