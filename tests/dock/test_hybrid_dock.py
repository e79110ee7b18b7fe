"""A dock with a hybrid key (Ed25519 + ML-DSA-65), over real ptys: the link authenticates with
the Ed25519 half, the receipt carries both signatures, and the archive verifies."""

from __future__ import annotations

import json
from pathlib import Path

from firmware.cli import main
from hw_sim.link import LinkedPtys
from secure_store import hybrid, keys
from secure_store.durable import write_atomic
from secure_store.receipts import read_receipts
from secure_store.verify import verify_path

DEVICE_ID = "CAM-0042"


def test_hybrid_dock_key_file_pulls_and_signs_a_version_2_receipt(device, tmp_path: Path, capsys) -> None:
    dock = hybrid.SigningKey.generate(True)
    key_file = tmp_path / "dock.key"
    write_atomic(key_file, keys.private_pem(dock), 0o600)
    device.record(segments=2)
    before = device.evidence()
    out = tmp_path / "archive"
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path, docks=[dock.public_key()])  # enrolled as a hybrid public key
        code = main(["dock", "pull", "--port", cable.b_path, "--out", str(out), "--dock-key", str(key_file)])
        served.join()
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert served.error is None and "2 segments verified, 2 confirmed" in printed.out
    assert all((out / DEVICE_ID / "evidence" / n).read_bytes() == d for n, d in before.items())
    receipts, problems = read_receipts(out / DEVICE_ID)
    assert problems == [] and [r.version for r in receipts] == [2]
    assert receipts[0].verify_key.mldsa65.public_bytes_raw() == dock.mldsa65.public_key().public_bytes_raw()
    assert [m[0] for m in receipts[0].manifests] == [1, 2]
    body = json.loads((out / DEVICE_ID / "receipts" / "receipt-000000000001.json").read_text())["body"]
    assert body["v"] == 2 and body["dock_key"] == dock.ed25519.public_key().public_bytes_raw().hex()
    report = verify_path(out / DEVICE_ID)
    assert report.ok, [str(p) for p in report.problems]
    # The device logged the dock by its Ed25519 fingerprint, as for a classic dock.
    assert [e.details["dock"] for e in device.events() if e.event == "offload_start"] == \
        [keys.fingerprint(dock.public_key())]
