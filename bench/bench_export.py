"""Export cost at the evidence system: verify + decrypt + remux (no re-encode) of sealed 720p30 footage.

Seals 10 s of sim-camera 1280×720 at 30 fps, 10 Mbit/s through the real segmenter and
sealer, then times ``export_evidence`` end to end and each stage alone: public-key
verification, decryption, and the MP4 remux of the decrypted frames.
"""

from __future__ import annotations

import tempfile
import time
from fractions import Fraction
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from export.exporter import export_evidence
from export.mp4 import Mp4Remuxer
from hw_sim.camera import SimCamera
from recorder.chunk import decode_chunk
from recorder.encoders import PyAVEncoder
from recorder.segmenter import Segmenter
from secure_store.audit import AuditLog
from secure_store.layout import DeviceRoot
from secure_store.store import EvidenceStore
from secure_store.verify import decrypt_chunks, verify_path

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT, FPS, SECONDS, BITRATE = 1280, 720, 30, 10, 10_000_000


def _seal(root: DeviceRoot, key: Ed25519PrivateKey, agency: X25519PrivateKey) -> None:
    audit = AuditLog(root.audit, key, "CAM-BENCH")
    store = EvidenceStore(root, device_id="CAM-BENCH", signing_key=key, agency_public_key=agency.public_key(),
                          audit=audit, reserve_bytes=0)
    segmenter = Segmenter(store.open_sealer(), "rec-bench", segment_s=10.0)
    camera = SimCamera(WIDTH, HEIGHT, FPS, pixel_format="yuv420p")
    with PyAVEncoder(segmenter, WIDTH, HEIGHT, FPS, bitrate=BITRATE, input_format="yuv420p") as encoder:
        for _, image, ts in camera.frames(FPS * SECONDS):
            encoder.encode(image, ts)
    segmenter.close()


def run() -> str:
    key, agency = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    with tempfile.TemporaryDirectory(dir=ROOT, prefix=".bench-export-") as d:
        root = DeviceRoot(Path(d) / "device")
        _seal(root, key, agency)
        size = sum(p.stat().st_size for p in root.evidence.iterdir())

        t = time.perf_counter()
        report = verify_path(root.evidence, key.public_key())
        verify_s = time.perf_counter() - t
        assert report.ok, report.problems

        t = time.perf_counter()
        frames = [f for s in sorted(root.evidence.glob("*.seg"))
                  for pt in decrypt_chunks(s, agency, key.public_key()) for f in decode_chunk(pt)]
        decrypt_s = time.perf_counter() - t

        t = time.perf_counter()
        muxer = Mp4Remuxer(Path(d) / ".remux.partial", Fraction(FPS))
        for f in frames:
            muxer.add(f)
        muxer.finish(Path(d) / "remux.mp4", 0)
        remux_s = time.perf_counter() - t

        t = time.perf_counter()
        result = export_evidence(root.evidence, agency, Path(d) / "out", key.public_key())
        export_s = time.perf_counter() - t
        assert result.recordings[0].frame_count == FPS * SECONDS

    mb = size / 1e6
    rows = [("verify (public key only)", verify_s), ("decrypt + decode chunks", decrypt_s),
            ("remux to MP4 (no re-encode)", remux_s), ("export_evidence end to end", export_s)]
    table = ["| stage | seconds | MB/s | × real time |", "|---|---:|---:|---:|"]
    table += [f"| {name} | {s:.2f} | {mb / s:,.0f} | {SECONDS / s:,.0f}× |" for name, s in rows]
    note = (f"\n{SECONDS} s of {WIDTH}×{HEIGHT} at {FPS} fps, {BITRATE / 1e6:.0f} Mbit/s target: {len(frames)} frames, "
            f"{mb:.1f} MB sealed. End to end verifies twice (once for the whole tree, once per segment as it "
            "decrypts), writes the MP4 durably and reads it back to count packets. 2 CPUs shared with other jobs.\n")
    return "\n".join(table) + "\n" + note
