"""What hybrid post-quantum protection costs, side by side with classic in one run (issue 17).

classic = X25519 agency key + Ed25519 device key (segment suite 1, manifest version 2);
hybrid  = ML-KEM-768 + X25519 agency key + Ed25519 + ML-DSA-65 device key (suite 2, version 3).

Both seal the same synthetic 1080p30 H.264 at 10 Mbit/s (``bench.bench_seal``'s GOPs, one-second
chunks, 10-s segments) through the real ``EvidenceStore`` / ``SegmentSealer`` with a real audit
log opened on the device key, so whatever the store writes per segment is counted: header,
manifest and audit entries (audit entries are hybrid once the audit log takes a hybrid key;
until then it is given the Ed25519 half and the table says so). Measured:

- sealing CPU (this process's user + system time, best of 5) scaled to one hour of footage,
  and the per-segment crypto alone (key wrap + manifest signature) times 360 segments;
- bytes per hour the store writes besides the chunk records, hybrid minus classic, as a
  share of the footage bytes (goal ≤ 0.1 %);
- verification throughput, hybrid vs classic (goal ≥ 90 % of classic).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench.bench_seal import BITRATE, SECONDS, SEGMENT_S, _gops, _measure, seal_gops
from secure_store import hybrid, keys
from secure_store.audit import AuditLog
from secure_store.errors import StoreError
from secure_store.keywrap import wrap_data_key
from secure_store.layout import DeviceRoot
from secure_store.store import EvidenceStore
from secure_store.verify import check_chain, verify_path, verify_segment

SEGMENTS_PER_HOUR = 3600 // SEGMENT_S
FOOTAGE_BYTES_PER_HOUR = BITRATE // 8 * 3600


def _keys(pq: bool) -> tuple[hybrid.SigningKey, object]:
    device = hybrid.SigningKey.generate(pq)
    return device, keys.generate("agency", pq)


def _audit(root: DeviceRoot, device: hybrid.SigningKey) -> tuple[AuditLog, bool]:
    """An audit log on the device key: whole if the audit log takes a hybrid key, else its Ed25519 half."""
    try:
        return AuditLog(root.audit, device if device.hybrid else device.ed25519, "BENCH-1"), device.hybrid
    except (StoreError, TypeError, ValueError):
        return AuditLog(root.audit, device.ed25519, "BENCH-1"), False


def _store(path: Path, device: hybrid.SigningKey, agency) -> tuple[EvidenceStore, bool]:
    root = DeviceRoot(path)
    root.evidence.mkdir(parents=True)
    audit, audit_hybrid = _audit(root, device)
    signing = device if device.hybrid else device.ed25519  # a classic device as today: a plain Ed25519 key
    return EvidenceStore(root, device_id="BENCH-1", signing_key=signing, agency_public_key=agency.public_key(),
                         audit=audit, reserve_bytes=0), audit_hybrid


def _overhead_bytes(root: Path) -> tuple[int, int]:
    """(header + manifest + audit bytes, number of segments) of one sealed device root."""
    from secure_store.format import read_header

    total, segments = 0, 0
    for seg in (root / "evidence").glob("*.seg"):
        with open(seg, "rb") as f:
            total += len(read_header(f)[1])
        total += seg.with_suffix(".manifest").stat().st_size
        segments += 1
    total += sum(p.stat().st_size for p in (root / "audit").iterdir() if p.is_file())
    return total, segments


def _crypto_per_segment(device: hybrid.SigningKey, agency, repeat: int = 200) -> float:
    """CPU seconds for one segment's public-key work: wrap a data key, sign a ~500-byte manifest."""
    public, message, data_key = agency.public_key(), bytes(500), bytes(32)
    start = time.process_time()
    for _ in range(repeat):
        wrap_data_key(data_key, public)
        device.sign(message)
    return (time.process_time() - start) / repeat


def _check_per_segment(device: hybrid.SigningKey, repeat: int = 200) -> float:
    """CPU seconds to check one manifest's signatures (both halves of a hybrid key)."""
    message = bytes(500)
    signatures, public = device.sign(message), device.public_key()
    start = time.process_time()
    for _ in range(repeat):
        public.verify(signatures, message)
    return (time.process_time() - start) / repeat


def _verify_segments(evidence: Path, key) -> None:
    """The per-segment reader rules (M, S, C) and the chain (H): what suite and manifest version change."""
    verified = []
    for seg in sorted(evidence.glob("*.seg")):
        s, problems = verify_segment(seg, key)
        assert not problems, problems
        verified.append(s)
    assert not check_chain(verified)


def _verify_all(root: Path, key) -> bool:
    """Every reader rule; False when they cannot all pass yet (a classic audit log under a hybrid key)."""
    try:
        return verify_path(root, key).ok
    except Exception:  # noqa: BLE001 - an audit verifier that does not know hybrid keys yet
        return False


def _interleaved(fns: dict[str, object], repeat: int = 7) -> dict[str, tuple[float, float]]:
    """Best (wall s, CPU s) of each, measured in turns: a busy spell of the shared machine hits both sides."""
    best = {name: (float("inf"), float("inf")) for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            w, c = _measure(fn, repeat=1)
            best[name] = (min(best[name][0], w), min(best[name][1], c))
    return best


def run() -> str:
    load = os.getloadavg()[0]
    gops = _gops()
    footage = sum(len(f.data) for g in gops for f in g)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sealing, checking, whole = {}, {}, {}
        for name, pq in (("classic", False), ("hybrid", True)):
            device, agency = _keys(pq)
            cpu_store, _ = _store(Path(tmp) / f"{name}-cpu", device, agency)
            runs = iter(range(100))
            sealing[name] = lambda st=cpu_store, r=runs: seal_gops(st, gops, f"bench-{next(r)}")
            store, audit_hybrid = _store(Path(tmp) / name, device, agency)
            seal_gops(store, gops, "bench-audited")
            overhead, segments = _overhead_bytes(store.root.root)
            verify_key = device.public_key() if pq else device.public_key().ed25519
            checking[name] = lambda e=store.root.evidence, k=verify_key: _verify_segments(e, k)
            if _verify_all(store.root.root, verify_key):
                whole[name] = lambda r=store.root.root, k=verify_key: _verify_all(r, k)
            results[name] = {"overhead": overhead / segments, "audit_hybrid": audit_hybrid,
                             "crypto": _crypto_per_segment(device, agency), "segments": segments,
                             "check": _check_per_segment(device)}
        for name, best in _interleaved(sealing).items():
            results[name]["seal_cpu"] = best[1]
        for name, best in _interleaved(checking, repeat=21).items():
            results[name]["verify_segments"] = best
        for name, best in (_interleaved(whole, repeat=21) if len(whole) == 2 else {}).items():
            results[name]["verify_all"] = best
    scale = 3600 / SECONDS
    c, h = results["classic"], results["hybrid"]
    extra = (h["overhead"] - c["overhead"]) * SEGMENTS_PER_HOUR
    share = extra / FOOTAGE_BYTES_PER_HOUR * 100
    rows = ["| | classic | hybrid | hybrid − classic |", "|---|---:|---:|---:|"]
    rows.append(f"| sealing CPU per hour of footage (store + audit log, measured) | {c['seal_cpu'] * scale:.2f} s | "
                f"{h['seal_cpu'] * scale:.2f} s | {(h['seal_cpu'] - c['seal_cpu']) * scale:+.2f} s |")
    rows.append(f"| key wrap + manifest signature, CPU per hour ({SEGMENTS_PER_HOUR} segments) | "
                f"{c['crypto'] * SEGMENTS_PER_HOUR:.3f} s | {h['crypto'] * SEGMENTS_PER_HOUR:.3f} s | "
                f"{(h['crypto'] - c['crypto']) * SEGMENTS_PER_HOUR:+.3f} s |")
    rows.append(f"| bytes per segment besides the chunks (header + manifest + audit) | {c['overhead']:,.0f} | "
                f"{h['overhead']:,.0f} | {h['overhead'] - c['overhead']:+,.0f} |")
    rows.append(f"| bytes per hour besides the chunks | {c['overhead'] * SEGMENTS_PER_HOUR / 1e6:.2f} MB | "
                f"{h['overhead'] * SEGMENTS_PER_HOUR / 1e6:.2f} MB | {extra / 1e6:+.2f} MB ({share:.3f} % of "
                f"{FOOTAGE_BYTES_PER_HOUR / 1e9:.1f} GB footage) |")
    rows.append(f"| manifest signature check per segment (CPU) | {c['check'] * 1e3:.2f} ms | "
                f"{h['check'] * 1e3:.2f} ms | {(h['check'] - c['check']) * 1e3:+.2f} ms per {footage / c['segments'] / 1e6:.1f} MB segment |")
    for label, key in (("verify, segment rules M S C H", "verify_segments"),
                       ("verify_path, every rule incl. audit log", "verify_all")):
        if key in c and key in h:
            rows.append(f"| {label} (MB/s) | {footage / c[key][0] / 1e6:.0f} | {footage / h[key][0] / 1e6:.0f} | "
                        f"{c[key][0] / h[key][0] * 100:.0f} % of classic (CPU: "
                        f"{c[key][1] / h[key][1] * 100:.0f} %) |")
    key = "verify_all" if "verify_all" in h else "verify_segments"
    ratio, ratio_cpu = (c[key][i] / h[key][i] * 100 for i in (0, 1))
    audit_note = ("audit entries hybrid (`\"v\":2`)" if h["audit_hybrid"] else
                  "audit entries still Ed25519 only (the audit log does not take a hybrid key yet), so the audit "
                  "bytes are the same on both sides")
    return "\n".join([
        "## Post-quantum protection: hybrid vs classic (issue 17)",
        "",
        f"{SECONDS} s of synthetic 1080p30 H.264 at 10 Mbit/s ({footage / 1e6:.1f} MB, {c['segments']} segments of "
        f"{SEGMENT_S} s) sealed through the real EvidenceStore with a real audit log, once with classic keys "
        "(X25519 agency, Ed25519 device: suite 1, manifest version 2) and once with hybrid keys (ML-KEM-768 + X25519 "
        "agency, Ed25519 + ML-DSA-65 device: suite 2, manifest version 3), in one run; " + audit_note + ".",
        "",
        *rows,
        "",
        f"Bytes added: {share:.3f} % of the footage (goal ≤ 0.1 %: {'met' if share <= 0.1 else 'missed'}). "
        f"Verification ({'every rule' if key == 'verify_all' else 'the segment rules'}) runs at {ratio_cpu:.0f} % "
        f"of classic speed by CPU time, {ratio:.0f} % by wall time (goal ≥ 90 %: "
        f"{'met' if min(ratio, ratio_cpu) >= 90 else 'met by CPU time' if ratio_cpu >= 90 else 'missed'}; "
        "wall time on this shared machine moves with the other jobs, CPU time is the verifier's own work). "
        f"CPU per hour is scaled from {SECONDS} s; every figure is the best "
        "of 7 (verify: 21) runs taken in turns (classic, hybrid, classic, ...) on a shared 2-core machine "
        f"(load average {load:.1f} when the run began). The whole-store sealing figure carries the "
        "fsync-bound noise of that machine, so the per-segment public-key work is also timed alone (200 key wraps "
        "and manifest signatures). Verify MB/s are by wall time.",
    ])


if __name__ == "__main__":
    print(run())
