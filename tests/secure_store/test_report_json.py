"""The JSON report a court reads (`bodycam verify --json`): every field, by value.

Built from what the test itself sealed (frame counts, sequence, markers) and the bytes
on disk (the manifest's SHA-256), not from the verifier's own parse of the manifest.
"""

from __future__ import annotations

import hashlib
import json

from secure_store.verify import verify_path


def test_report_names_every_segment_field_and_every_problem(device, keyset, h):
    store = device(clock=lambda: 1_764_000_000.0)
    sealer = store.open_sealer()
    sealer.begin_segment("rec-7", 0)
    sealer.write_chunk(h.gop(0, n=5))
    sealer.add_marker(2 * h.FRAME_US, "officer-note")
    sealer.write_chunk(h.gop(5, n=4))
    sealer.end_segment()
    h.record(store, "rec-7", segments=1, chunks=1, frames_per_chunk=3, first_frame=9, first_index=1)
    evidence = store.root.evidence
    report = verify_path(evidence, keyset.device.public_key())
    as_json = json.loads(json.dumps(report.to_json()))          # what the CLI prints
    first, second = as_json["segments"]
    offset = first["first_utc_us"]                               # UTC of frame 0
    assert first == {
        "file": str(evidence / "seg-0000000001.seg"), "device_id": h.DEVICE_ID, "seq": 1,
        "recording_id": "rec-7", "index": 0, "chunks": 3, "frames": 9,
        "first_utc_us": offset, "last_utc_us": offset + 8 * h.FRAME_US,
        "recovered": False, "storage_full": False,
        "markers": [{"timestamp_us": 2 * h.FRAME_US, "label": "officer-note"}],
        "manifest_sha256": hashlib.sha256((evidence / "seg-0000000001.manifest").read_bytes()).hexdigest(),
        "clock_error_us": None,            # this store's clock was never set against a reference
        "clock": "clock error unknown (no time reference since the clock was last set or jumped)",
        "signatures": "ed25519", "suite": 1, "key_wrap": "hpke-x25519",  # classic keys: suite 1, manifest v2
    }
    assert abs(offset / 1e6 - 1_764_000_000.0) < 1
    assert (second["seq"], second["index"], second["chunks"], second["frames"], second["markers"]) == (2, 1, 2, 3, [])
    assert second["last_utc_us"] - second["first_utc_us"] == 2 * h.FRAME_US
    assert as_json["ok"] is True and as_json["problems"] == [] and as_json["audit_logs"] == [str(store.root.audit)]
    (evidence / "seg-0000000002.seg").unlink()
    broken = verify_path(evidence, keyset.device.public_key()).to_json()
    assert broken["ok"] is False
    assert broken["problems"] == [{"file": "seg-0000000002.seg", "chunk": None,
                                   "reason": "segment file missing for a signed manifest"}]
