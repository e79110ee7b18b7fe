"""`bodycam demo`: the whole journey on simulated hardware, from a press to a court export.

1. make throw-away SIMULATION-ONLY keys (agency, vendor, dock) and provision a sim device,
   all hybrid post-quantum as a real agency's should be (ML-KEM-768 + X25519 agency key,
   Ed25519 + ML-DSA-65 device, dock and vendor keys, a CA with both hierarchies);
2. boot it (sim camera with a fast clock, MockFactory pins, sim battery, a linked pty pair
   as the USB cable) and let it buffer ≥ 35 s of sensor time;
3. double-press record on the MockFactory pin, record 20 s with a marker (function
   button), hold record to stop;
4. dock (dock-detect pin): the dock pulls over the pty link, verifies, puts each segment into
   a WORM bucket (a SeaweedFS S3 server with Object Lock on 127.0.0.1, in OUT/evidence-store)
   and confirms it only once the bucket holds it under retention;
5. verify and export the dock's copy with the sim agency key: MP4s with JSON and HTML reports;
   the verification says which suite wrapped each segment and which signatures it carries.

The camera's clock is "stepped": it encodes as fast as the CPU allows, but only as far as
the demo lets it (``hw_sim.sensor_gate``). The demo lets exactly 35 s of video through,
then presses; lets 10 s through, then marks; lets 10 s more through, then holds to stop.
No video passes while a finger is on a button, so the recording holds exactly 20 s after
the press on a fast machine or a busy one: every wait is for sensor time or for the
device's own answer, never a wall-clock race. (The finger itself uses the wall clock, as
gpiozero's hold and our settle timers do; ``HANG_S`` only catches a device that hangs.)
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from firmware.config import Config, with_overrides
from firmware.machine import State
from secure_store import keys

log = logging.getLogger(__name__)

MARKER_FILE = "SIMULATION-ONLY.txt"
MARKER_TEXT = """SIMULATION ONLY — made by `bodycam demo`.

The keys in sim-keys/ were generated on this machine for a simulated device. They protect
nothing: never provision a real camera with them, never trust footage sealed to them.
This whole directory is thrown away and remade by the next `bodycam demo`.
"""
DEVICE_ID = "SIM-DEMO-0001"
HANG_S = 300.0  # a step that takes longer is a hung device, not a slow machine


class DemoError(Exception):
    """The demo could not run to the end; the message says where it stopped."""

    exit_code = 1


@dataclass
class DemoSummary:
    out: Path
    device_id: str = DEVICE_ID
    resolution: str = ""
    segments: int = 0
    bytes_sealed: int = 0
    pre_event_s: float = 0.0
    recorded_s: float = 0.0
    markers: list[str] = field(default_factory=list)
    pulled: int = 0
    confirmed: int = 0
    verified: bool = False
    problems: list[str] = field(default_factory=list)
    mp4s: list[Path] = field(default_factory=list)
    reports: list[Path] = field(default_factory=list)
    protection: str = ""   # key wrap and signatures, as the verification reports them
    wall_s: float = 0.0


def _fresh_out(out: Path) -> None:
    """Reuse ``out`` only if an earlier demo made it; never delete anything else, never create a typo'd path."""
    if not out.parent.is_dir():
        raise DemoError(f"{out.parent} is not an existing directory; create it first or fix --out")
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER_FILE).exists():
            raise DemoError(f"{out} exists and was not made by bodycam demo; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER_FILE).write_text(MARKER_TEXT)


def _sim_keys(out: Path) -> dict[str, Path]:
    key_dir = out / "sim-keys"
    key_dir.mkdir()
    (key_dir / MARKER_FILE).write_text(MARKER_TEXT)
    made = {}
    for kind in ("agency", "vendor", "dock"):  # hybrid post-quantum, as `bodycam keys new agency` makes them
        private, public = keys.write_keypair(kind, key_dir / f"sim-{kind}", pq=True)
        made[kind], made[kind + "_pub"] = private, public
    made.update(_sim_ca(key_dir, made["dock_pub"]))
    return made


def _sim_ca(key_dir: Path, dock_pub: Path) -> dict[str, Path]:
    """A simulated agency CA with both hierarchies: its two roots (what a court is given), the dock's chains."""
    from secure_store import pki

    ca = pki.CertificateAuthority(key_dir / "sim-ca")
    ca.init("Simulated Agency", pq=True)
    chain = ca.issue("dock", "Sim Dock 1", keys.load_verify_key(dock_pub, "dock"))
    (key_dir / "sim-dock-chain.pem").write_bytes(pki.chain_pem(chain))
    export_key, export_pub = keys.write_keypair("export", key_dir / "sim-export")  # signs the MP4s' C2PA
    chain = ca.issue("export", "Sim Court Exports", keys.load_public_key(export_pub, "export"))
    (key_dir / "sim-export-chain.pem").write_bytes(pki.chain_pem(chain))
    return {"ca": ca.dir, "agency_root": ca.dir / pki.TRUST_ROOTS, "c2pa_root": ca.dir / "root.pem",
            "dock_chain": key_dir / "sim-dock-chain.pem", "export_key": export_key,
            "export_chain": key_dir / "sim-export-chain.pem"}


def demo_config(resolution: str, fps: int, pre_event_s: float, bitrate: int) -> Config:
    return with_overrides(
        Config(),
        video={"resolution": resolution, "fps": fps, "pre_event_s": pre_event_s, "segment_s": 10.0,
               "bitrate": bitrate},
        storage={"reserve_mb": 0},
        gps={"enabled": True},  # the sim GPS twin: location in the export report and a GPX track
    )


def run_demo(
    out: str | Path,
    *,
    resolution: str = "1280x720",
    fps: int = 30,
    pre_event_s: float = 30.0,
    buffer_s: float = 35.0,
    record_s: float = 20.0,
    bitrate: int = 4_000_000,
    say: Callable[[str], None] = lambda line: None,
) -> DemoSummary:
    """Run the demo into ``out``; ``say`` receives one line per step (the CLI prints them)."""
    from dock.client import pull
    from dock.ingest import Ingestor
    from dock.seaweed import embedded_store
    from dock.trust import DockTrust
    from export.exporter import export_evidence
    from export.provenance import ExportSigner
    from secure_store import pki
    from secure_store.verify import verify_path
    from firmware.device import Device
    from firmware.provision import provision
    from hw_sim.link import LinkedPtys
    from hw_sim.pins import Finger

    started = time.monotonic()
    out = Path(out).resolve()
    _fresh_out(out)
    summary = DemoSummary(out, resolution=resolution)
    made = _sim_keys(out)
    root = out / "device"
    provision(root, DEVICE_ID, made["agency_pub"], made["vendor_pub"], ca=made["ca"])  # the dock is admitted by its certificate
    say(f"provisioned simulated device {DEVICE_ID} in {root} (SIMULATION ONLY keys in {out / 'sim-keys'})")

    config = demo_config(resolution, fps, pre_event_s, bitrate)
    pins, controls = config.pins, config.controls
    with LinkedPtys() as cable:
        device = Device(root, config, sim=True, port=cable.a_path, camera_clock="stepped")
        finger = Finger(device.pin_factory, settle_s=controls.bounce_s)
        gate = device.sensor_gate
        try:
            device.start()
            say(f"booted: {resolution}@{fps}, pre-event buffer {pre_event_s:g} s, sensor clock stepped")
            t0 = time.monotonic()
            gate.allow_until(buffer_s)
            device.wait_sensor(buffer_s, f"{buffer_s:g} s of buffered video", stall_s=HANG_S)
            rate = device.sensor_seconds / max(time.monotonic() - t0, 1e-3)  # sensor seconds per wall second
            say(f"buffered {device.sensor_seconds:.1f} s of sensor time (holding {device.buffer.held_seconds:.1f} s)"
                f" at {rate:.1f}x real time; the camera waits while the finger presses")

            finger.double(pins.record_button)
            device.wait_for(lambda: device.machine.state is State.RECORDING, HANG_S, "the double press to start")
            start_s = device.recording_started_us / 1e6
            say(f"double-pressed record at sensor {start_s:.1f} s: recording, LED red")

            gate.allow_until(start_s + record_s / 2)
            device.wait_sensor(start_s + record_s / 2, "the marker moment", stall_s=HANG_S)
            finger.press(pins.function_button)
            device.wait_for(lambda: device.machine.recording is None or device.machine.recording.markers, HANG_S,
                            "the marker")
            say(f"function button at sensor {device.sensor_seconds:.1f} s: marker")

            gate.allow_until(start_s + record_s)
            device.wait_sensor(start_s + record_s, "the end of the recording", stall_s=HANG_S)
            finger.hold(pins.record_button, controls.stop_hold_s)
            device.wait_for(lambda: device.machine.state is not State.RECORDING, HANG_S, "the hold to stop")
            rec = device.machine.last_recording
            summary.markers = list(rec.markers)
            summary.recorded_s = device.sensor_seconds - start_s
            say(f"held record {controls.stop_hold_s:g} s: stopped, last segment sealed "
                f"(recording {rec.recording_id})")

            evidence = [p for p in root.joinpath("evidence").glob("seg-*.seg")]
            summary.segments = len(evidence)
            summary.bytes_sealed = sum(p.stat().st_size for p in evidence)

            finger.set_active(pins.dock_detect, True)
            device.wait_for(lambda: device.machine.state is State.DOCKED, 10, "docking")
            say(f"docked: pulling over the simulated USB serial link {cable.b_path}")
            dock_key = keys.load_signing_key(made["dock"], "dock")  # receipts: both halves; the link: Ed25519
            with embedded_store(out / "evidence-store") as store:   # SeaweedFS S3, Object Lock, 127.0.0.1 only
                ingestor = Ingestor(store, out / "dock")
                pulled = pull(cable.b_path, out / "dock", dock_key, store_holds=ingestor.segment_held,
                              trust=DockTrust.load(made["agency_root"], cert=made["dock_chain"]))
                ingestor.enqueue_device(out / "dock" / DEVICE_ID)
                _, left = ingestor.drain()
            if left:
                summary.problems.append(f"evidence store: {left} object(s) still queued, not in the bucket")
            summary.pulled, summary.confirmed = len(pulled.fetched), len(pulled.confirmed)
            summary.problems += pulled.problems
            say(f"pulled {len(pulled.fetched)} files ({pulled.bytes_fetched} bytes) in {pulled.seconds:.1f} s, "
                f"verified, locked in the WORM bucket s3://{store.bucket} (COMPLIANCE) and only then confirmed "
                f"{len(pulled.confirmed)} segments (released on the device)")
            finger.set_active(pins.dock_detect, False)
        finally:
            device.stop("demo finished")

    agency_key = keys.load_private_key(made["agency"], "agency")
    device_key = keys.load_verify_key(root / "keys" / "device.pub", "device")
    signer = ExportSigner.from_files(made["export_chain"], made["export_key"])  # C2PA: Ed25519, its own root
    result = export_evidence(out / "dock" / DEVICE_ID, agency_key, out / "export", device_key,
                             signer=signer, trust_root=made["c2pa_root"].read_bytes())
    anchored = verify_path(out / "dock" / DEVICE_ID, trust_root=pki.read_roots(made["agency_root"]))
    say(f"verified against the agency root: {'OK' if anchored.ok else 'FAILED'}, "
        f"{len(anchored.segments)} segment(s), receipts and audit log checked (both roots: Ed25519, ML-DSA-65)")
    summary.protection, hybrid_problems = _protection(anchored.to_json())
    say(f"post-quantum protection: {summary.protection}")
    summary.problems += hybrid_problems
    summary.verified = result.verification.ok and anchored.ok and anchored.anchored
    summary.problems += [str(p) for p in anchored.problems]
    summary.problems += [str(p) for p in result.verification.problems]
    summary.problems += [f"not exported: {s.recording_id}: {s.reason}" for s in result.skipped]
    for recording in result.recordings:
        summary.mp4s.append(recording.mp4)
        summary.reports.append(recording.report)
        first_ts = _first_timestamp_us(recording.report, rec.recording_id)
        if first_ts is not None:
            summary.pre_event_s = round(start_s - first_ts / 1e6, 2)
    summary.wall_s = round(time.monotonic() - started, 1)
    return summary


def _protection(report: dict) -> tuple[str, list[str]]:
    """What protects the demo's footage, from the verify report; a problem if any of it is classic."""
    wraps = sorted({str(s.get("key_wrap") or f"suite {s.get('suite')}") for s in report["segments"]})
    signatures = sorted({str(t.get("signatures")) for t in report["trust"].values()})
    problems = []
    if signatures != ["ed25519+mldsa65"]:
        problems.append(f"expected hybrid signatures (ed25519+mldsa65), the device's are {', '.join(signatures)}")
    if any(s.get("suite", 2) != 2 for s in report["segments"]):
        problems.append(f"expected every segment wrapped with suite 2 (ML-KEM-768 + X25519), found {', '.join(wraps)}")
    return f"segment keys wrapped with {', '.join(wraps)}; signatures {', '.join(signatures)}", problems


def _first_timestamp_us(report: Path, recording_id: str) -> int | None:
    """The first frame's sensor timestamp of a recording, from its export report."""
    doc = json.loads(Path(report).read_text())
    if doc.get("recording_id") != recording_id or not doc.get("segments"):
        return None
    return doc["segments"][0]["first_timestamp_us"]
