"""Dock → evidence store: ingest, verify from the bucket, and several bays at once.

Against one real SeaweedFS server (``weed mini`` on 127.0.0.1, started here), side by side
in one run, each figure the median of a few runs:

- ingest: ``Ingestor.segment_held`` per segment as a bay calls it (with the SHA-256 digests, whole file and each 8 MiB part,
  the pull's fetch took and checked as the bytes came in; durable queue entries, create-only
  PUT / multipart with the checksums and COMPLIANCE retention, then HeadObject read back) vs
  a plain ``boto3 upload_file`` of the same files to the same server, paired segment by
  segment; also ``segment_held`` without digests (it hashes each file when queueing). Goal:
  ≥ 90 % of upload_file.
- verify: ``bodycam verify s3://...`` (read straight from the bucket: ranged GETs of a
  window at a time, nothing written to disk) vs ``bodycam verify DIR`` of the same evidence
  on local disk.
- bays: 1 and 4 simulated cameras pulled at once by one ``DockStation`` (a cable process
  and a device process per bay), each segment confirmed only once the store holds it.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEGMENTS, CHUNKS, FRAMES, FRAME_BYTES = 8, 10, 5, 240_000    # 8 segments of ~12 MB: a 10 s 720p30 segment
BAY_SEGMENTS, BAY_CHUNKS = 4, 4                               # per bay: 4 segments of ~4.8 MB
RUNS = 5


def _seal(base: Path, device_id: str, segments: int, chunks: int, dock: object = None) -> tuple[Path, object]:
    """A provisioned device root with ``segments`` real sealed segments, enrolling ``dock``
    (a new dock key if None); (root, dock key)."""
    from buffer.frame import Frame
    from secure_store import keys
    from secure_store.audit import AuditLog
    from secure_store.durable import write_atomic
    from secure_store.layout import DeviceRoot
    from secure_store.store import EvidenceStore
    from secure_store.trust import identity_json
    device, agency, dock = keys.generate("device"), keys.generate("agency"), dock or keys.generate("dock")
    root = DeviceRoot(base / device_id)
    root.docks.mkdir(parents=True)
    write_atomic(root.device_key, keys.private_pem(device), 0o600)
    write_atomic(root.agency_pub, keys.public_pem(agency.public_key()))
    write_atomic(root.docks / "bench.pub", keys.public_pem(dock.public_key()))
    write_atomic(root.identity, identity_json(device_id, device.public_key()))
    store = EvidenceStore(root, device_id=device_id, signing_key=device, agency_public_key=agency.public_key(),
                          audit=AuditLog(root.audit, device, device_id), reserve_bytes=0)
    sealer = store.open_sealer()
    n = 0
    for s in range(segments):
        sealer.begin_segment("bench", s)
        for _ in range(chunks):
            sealer.write_chunk([Frame(os.urandom(FRAME_BYTES), i == 0, (n + i) * 33_333) for i in range(FRAMES)])
            n += FRAMES
        sealer.end_segment()
    return root.root, dock


def _archive_of(device_root: Path, archive: Path, device_id: str) -> Path:
    """The dock's archive layout for a device root (what a pull leaves behind)."""
    d = archive / device_id
    shutil.copytree(device_root / "evidence", d / "evidence")
    shutil.copytree(device_root / "audit", d / "audit")
    shutil.copy(device_root / "identity.json", d / "identity.json")
    return d


def _bucket(s3, name: str, warm: bool = False) -> str:
    """A new bucket; ``warm``: with one small object written first, untimed (a new bucket's first
    write costs SeaweedFS ~0.2-1 s of set-up, once in a bucket's life; a force's store is long-lived)."""
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    if warm:
        s3.put_object(Bucket=name, Key="warm-up", Body=b"warm-up")
    return name


def _serve(root: str, port: str, device_id: str) -> None:
    """Device end (own process): serve one dock session."""
    from firmware.offload import OffloadServer, OffsetClock, load_enrolled_docks
    from secure_store import keys
    from secure_store.audit import AuditLog
    from secure_store.layout import DeviceRoot
    from secure_store.store import EvidenceStore
    r = DeviceRoot(Path(root))
    device = keys.load_private_key(r.device_key, "device")
    audit = AuditLog(r.audit, device, device_id)
    clock = OffsetClock(r.state / "clock.json")
    store = EvidenceStore(r, device_id=device_id, signing_key=device, reserve_bytes=0, clock=clock,
                          agency_public_key=keys.load_public_key(r.agency_pub, "agency"), audit=audit)
    print("listening", flush=True)
    OffloadServer(port, store, audit, device, device_id, load_enrolled_docks(r.docks), None, clock).serve_session(60)


def _bays(n: int, work: Path, config) -> tuple[float, int]:
    """Pull ``n`` cameras at once through one DockStation into the store; (seconds, bytes)."""
    from dock.bays import DockStation
    from dock.ingest import Ingestor
    base, archive = work / f"bays-{n}", work / f"bays-{n}-archive"
    cables, servers, ports, total = [], [], [], 0
    key = None
    for i in range(n):
        root, key = _seal(base, f"BAY-{n}-{i}", BAY_SEGMENTS, BAY_CHUNKS, key)   # one dock for all
        total += sum(p.stat().st_size for p in (root / "evidence").iterdir())
        cable = subprocess.Popen([sys.executable, "-m", "hw_sim.link"], cwd=ROOT, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        device_end, dock_end = cable.stdout.readline().split()
        server = subprocess.Popen([sys.executable, "-m", "bench.bench_ingest", "serve", str(root), device_end,
                                   f"BAY-{n}-{i}"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "listening"
        cables.append(cable)
        servers.append(server)
        ports.append(dock_end)
    station = DockStation(ports, archive, key, ingestor=Ingestor(config, archive), max_sessions=1,
                          sync_time=False)
    started = time.perf_counter()
    station.run()
    elapsed = time.perf_counter() - started
    for server, cable in zip(servers, cables):
        server.wait(timeout=60)
        cable.stdin.close()
        cable.wait(timeout=10)
    held = list((archive / ".ingest" / "queue").glob("*.json"))
    assert not [h for h in held if "evidence" in h.read_text()], "segments left in the queue"
    return elapsed, total


def run() -> str:
    import boto3
    from dock.ingest import Ingestor
    from dock.ingest_parts import PartDigest
    from dock.seaweed import SeaweedServer
    from dock.store_config import StoreConfig
    from secure_store.sources import S3Source, SourcePath
    from secure_store.verify import verify_path

    with tempfile.TemporaryDirectory(dir=ROOT, prefix=".bench-ingest-") as tmp, SeaweedServer() as seaweed:
        work = Path(tmp)
        s3 = boto3.client("s3", **seaweed.client_kwargs())
        device_root, _ = _seal(work / "devices", "CAM-BENCH", SEGMENTS, CHUNKS)
        files = sorted((device_root / "evidence").glob("seg-*.seg"))
        size = sum(p.stat().st_size for p in (device_root / "evidence").iterdir())
        mb = size / 1e6
        ingest_s, hashing_s, plain_s, plain_sha_s = [], [], [], []
        config = None
        for run_no in range(RUNS):
            config, hashing_config = (StoreConfig(bucket=_bucket(s3, f"bench-{what}-{run_no}", True), agency="bench",
                                                  endpoint=seaweed.endpoint, access_key_id=seaweed.access_key,
                                                  secret_access_key=seaweed.secret_key)
                                      for what in ("ingest", "hashing"))
            archive, hashing_archive = work / f"archive-{run_no}", work / f"hashing-{run_no}"
            device_dir = _archive_of(device_root, archive, "CAM-BENCH")
            ingestor = Ingestor(config, archive)
            hashing_dir = _archive_of(device_root, hashing_archive, "CAM-BENCH")
            hashing = Ingestor(hashing_config, hashing_archive)
            plain = _bucket(s3, f"bench-plain-{run_no}", True)
            ingest_t = hashing_t = plain_t = plain_sha_t = 0.0
            for seg in files:   # paired, segment by segment: a busy moment on the machine hits both
                # what the pull's fetch hands on: each file's SHA-256 and each 8 MiB part's, taken as its bytes arrived
                fetched = {p.name: PartDigest.of_file(p) for p in (seg, seg.with_suffix(".manifest"))}
                digests = {name: d.hexdigest() for name, d in fetched.items()}
                parts = {name: d.parts() for name, d in fetched.items()}
                t = time.perf_counter()
                assert ingestor.segment_held(device_dir, seg.name, digests=digests, parts=parts)
                ingest_t += time.perf_counter() - t
                t = time.perf_counter()
                assert hashing.segment_held(hashing_dir, seg.name)
                hashing_t += time.perf_counter() - t
                t = time.perf_counter()
                for p in (seg, seg.with_suffix(".manifest")):
                    s3.upload_file(str(p), plain, f"plain/{p.name}")
                plain_t += time.perf_counter() - t
                t = time.perf_counter()
                for p in (seg, seg.with_suffix(".manifest")):
                    s3.upload_file(str(p), plain, f"plain-sha256/{p.name}", ExtraArgs={"ChecksumAlgorithm": "SHA256"})
                plain_sha_t += time.perf_counter() - t
            ingest_s.append(ingest_t)
            hashing_s.append(hashing_t)
            plain_s.append(plain_t)
            plain_sha_s.append(plain_sha_t)
        assert config is not None
        ingestor.enqueue_device(device_dir)
        ingestor.drain()

        local_s, remote_s = [], []
        url = f"s3://{config.bucket}/v1/bench/CAM-BENCH"
        for _ in range(RUNS):
            t = time.perf_counter()
            assert verify_path(device_dir).ok
            local_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            report = verify_path(SourcePath(S3Source(url, s3)))
            assert report.ok and len(report.segments) == SEGMENTS, report.problems
            remote_s.append(time.perf_counter() - t)

        bay_rows = []
        for n in (1, 4):
            seconds, total = _bays(n, work, StoreConfig(
                bucket=_bucket(s3, f"bench-bays-{n}"), agency="bench", endpoint=seaweed.endpoint,
                access_key_id=seaweed.access_key, secret_access_key=seaweed.secret_key))
            bay_rows.append((n, seconds, total))

    ingest, plain, plain_sha = statistics.median(ingest_s), statistics.median(plain_s), statistics.median(plain_sha_s)
    hashing = statistics.median(hashing_s)
    local, remote = statistics.median(local_s), statistics.median(remote_s)
    one = bay_rows[0][2] / bay_rows[0][1] / 1e6
    rows = [
        "| what | MB/s (median) | ratio | notes |",
        "|---|---|---|---|",
        f"| plain boto3 `upload_file` | {mb / plain:.1f} | 1.00 | same files, same server, boto3 defaults (CRC32) |",
        f"| boto3 `upload_file`, SHA-256 checksum | {mb / plain_sha:.1f} | {plain / plain_sha:.2f} of plain | "
        f"`ExtraArgs={{'ChecksumAlgorithm': 'SHA256'}}`: the checksum ingest must send |",
        f"| bodycam ingest (`segment_held`, as a bay calls it) | {mb / ingest:.1f} | {plain / ingest:.2f} of plain | "
        f"digests from the pull's fetch (whole file and each 8 MiB part, one pass): ingest hashes nothing itself "
        f"(the SigV4 signature covers the signed checksum header, not a second hash of the body); queue "
        f"entries fsync'd; create-only + SHA-256 checksums (each part's checked by the server) + COMPLIANCE; upload "
        f"ID saved while the parts go up; manifest alongside; HeadObject read-back before confirming |",
        f"| bodycam ingest, no digests handed on | {mb / hashing:.1f} | {plain / hashing:.2f} of plain | "
        f"the same, but each file read and hashed when queued (whole file and each part in one pass) |",
        f"| verify from local disk | {mb / local:.1f} | 1.00 | `verify_path` |",
        f"| verify straight from the bucket | {mb / remote:.1f} | {local / remote:.2f} of local | "
        f"`verify_path` reading the bucket: ranged GETs of ≤ 8 MiB, small objects in memory, nothing on disk |",
    ]
    for n, seconds, total in bay_rows:
        rate = total / seconds / 1e6
        rows.append(f"| {n} bay(s) pulling + ingesting at once | {rate:.1f} aggregate | {rate / one:.2f}× one bay | "
                    f"{total / 1e6:.1f} MB from {n} camera(s), confirm after the store holds each segment |")
    notes = (f"\n{mb:.1f} MB of sealed segments ({SEGMENTS} × ~{mb / SEGMENTS:.0f} MB, plus manifests), median of "
             f"{RUNS} runs; SeaweedFS `weed mini` 4.48 on the same {os.cpu_count()} shared cores as the dock (and, "
             "for the bays, a cable and a device process per bay), so the store, the dock and the cables compete "
             "for CPU: relative figures for this machine. Goal: ingest ≥ 90 % of plain upload_file."
             + " Where it saturates: here, at the CPU — 4 bays are 4 cable relays, 4 device processes, the dock and the S3 server on 2 shared cores, and every byte is SHA-256-hashed by the device listing, the dock's fetch, verify and ingest, and the server; the pty links themselves carry ~35 MB/s each (dock section), so the links are not the bound on this machine. Ingest vs upload_file: each new bucket first gets one small untimed PUT (SeaweedFS's first write into a new bucket took ~1 s here, once in a bucket's life, and fell on ingest's first segment: it alone had held the ratio near 0.7-0.8 in some runs). The pull hands on each part's SHA-256 with the whole file's, so ingest hashes nothing; the server checks each part against it. Nor does botocore hash a body again for the SigV4 signature: the dock's client sets `payload_signing_enabled = False` (UNSIGNED-PAYLOAD, as upload_file's CRC32 trailer is sent unsigned), since the body is already bound by the signed `x-amz-checksum-sha256` header the server checks (with botocore's default over plain HTTP, re-hashing every body for the signature, the ratio was 0.81-0.90 across runs). What ingest still does that upload_file does not, per ~12 MB segment (timers around each step, this machine under load): the queue entries fsync'd before the first byte (~10 ms), the manifest's create-only PUT with retention and its read-back alongside the parts (~15-25 ms on the same 2 cores as the parts and the server), a HeadObject read-back before confirming (~7 ms) and the entries dropped (~4 ms); the server checks SHA-256 where upload_file sends CRC32. The run-to-run spread of the paired ratio on this machine is a few hundredths when it is otherwise idle, about ±0.1 when it is shared (load 8-10 on 2 cores). Verify from the bucket: a plain GET of a 12 MB object runs at ~140 MB/s here (SeaweedFS serving on the same 2 cores); the next window is fetched while the verifier hashes this one, so the bound is the server's GET rate, not the disk (the staged copy this replaced measured 0.32 of local on a quieter run, through a temporary copy of the whole device)." + "\n")
    return "## Evidence store: ingest, verify from the bucket, bays\n\n" + "\n".join(rows) + "\n" + notes


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        _serve(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        print(run())
