"""Location and clock error end to end: the sim GPS on a pty, the real reader, real H.264 sealed
by the real store with the fixes inside the chunks, exported to a report and a GPX track."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from export.exporter import export_evidence
from firmware.clock import ClockTracker
from firmware.gps import LocationLog, SerialGps
from firmware.offload import OffsetClock
from hw_sim.camera import SimCamera
from hw_sim.gps import UERE_M, Route, SimGps, distance_m
from recorder.encoders import PyAVEncoder
from recorder.location import decode_locations, encode_records
from recorder.segmenter import Segmenter
from secure_store.audit import AuditLog
from secure_store.layout import DeviceRoot
from secure_store.store import EvidenceStore
from secure_store.verify import decrypt_chunks

WIDTH, HEIGHT, FPS = 256, 144, 10
SECONDS = 30
GPX = "{http://www.topografix.com/GPX/1/1}"


def wait_until(what, reader: SerialGps, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, f"GPS reader never got there: {reader.stats()}"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gps-export")
    route = Route(tunnels=[(12.0, 16.0)])
    utc0 = route.start_utc.timestamp()
    state = {"sensor_us": 0}
    base = lambda: utc0 + state["sensor_us"] / 1e6  # noqa: E731 - the device clock, on time here
    root = DeviceRoot(tmp / "device")
    device_key, agency_key = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    audit = AuditLog(root.audit, device_key, "CAM-GPS", clock=base)
    clock = OffsetClock(root.state / "clock.json", base=base)
    tracker = ClockTracker(clock, audit, monotonic=lambda: state["sensor_us"] / 1e6)
    _, new = clock.sync(utc0, "dock:0123456789abcdef")
    tracker.dock_synced(new)
    log = LocationLog()
    store = EvidenceStore(root, device_id="CAM-GPS", signing_key=device_key,
                          agency_public_key=agency_key.public_key(), audit=audit, clock=clock, reserve_bytes=0,
                          clock_bound=tracker.segment_bound, locations=log.take)
    sim = SimGps(tmp / "gps.tty", route)
    reader = SerialGps(str(sim.path), 9600, lambda fix, b: log.add(fix), lambda: (state["sensor_us"], base()),
                       retry_s=0.02)
    reader.start()
    try:
        assert reader.connected.wait(10)
        camera = SimCamera(WIDTH, HEIGHT, FPS)
        segmenter = Segmenter(store.open_sealer(), "20261130T140000Z", segment_s=10)
        encoder = PyAVEncoder(segmenter, WIDTH, HEIGHT, FPS, bitrate=300_000)
        log.recording_started(0)
        markers = {55: "suspect seen", 140: "in the tunnel", 225: "receiver unplugged"}
        sim.garbage = 200
        for number in range(SECONDS * FPS):
            ts = camera.timestamp_us(number)
            state["sensor_us"] = ts
            encoder.encode(camera.render(number), ts)
            if number in markers:
                segmenter.add_marker(markers[number], ts)
            if number % FPS == 0:
                t = number // FPS
                if t == 7:
                    sim.corrupt_next = 1
                if t == 20:
                    sim.unplug()
                    wait_until(lambda: not reader.connected.is_set(), reader)
                if t == 25:
                    sim.plug()
                    wait_until(lambda: reader.stats().get("connects", 0) == 2, reader)
                if sim.plugged:
                    done = sum(reader.stats().get(k, 0) for k in ("sentences", "bad"))
                    sim.emit(t)
                    wait_until(lambda: sum(reader.stats().get(k, 0) for k in ("sentences", "bad")) >= done + 3,
                               reader)
        encoder.close()
        segmenter.close()
    finally:
        reader.stop()
        sim.close()
    # the fixes are inside the ciphertext: no record and no NMEA text is readable on the device's disk
    sealed = b"".join(p.read_bytes() for p in root.evidence.glob("*.seg"))
    records = [encode_records([f]) for path in sorted(root.evidence.glob("*.seg"))
               for pt in decrypt_chunks(path, agency_key, device_key.public_key()) for f in decode_locations(pt)]
    assert len(records) >= 20 and not any(r in sealed or r[13:] in sealed for r in records)
    # whole NMEA sentence heads (7 bytes): "$GP" alone turns up by chance in megabytes of ciphertext
    assert not any(head in sealed for head in (b"$GPRMC,", b"$GPGGA,", b"$GPGSA,"))
    result = export_evidence(root.evidence, agency_key, tmp / "out", device_key.public_key())
    [recording] = result.recordings
    report = json.loads(recording.report.read_text())
    return route, report, recording.report.with_suffix(".gpx"), reader.stats()


def test_positions_at_markers_match_the_route(exported) -> None:
    route, report, _, _ = exported
    seen, tunnel, unplugged = report["markers"]
    assert seen["label"] == "suspect seen" and seen["position"]["fix"] is True
    p = seen["position"]
    t = (int(p["gps_utc"][17:19]) + int(p["gps_utc"][14:16]) * 60)  # seconds after 14:00:00 on the route
    assert t == 5  # the newest fix at 5.5 s is the 5 s epoch
    lat, lon, _, _ = route.state(t)
    assert distance_m(p["lat"], p["lon"], lat, lon) <= p["accuracy_m"] == pytest.approx(0.8 * UERE_M)
    assert tunnel["position"] == {"fix": False, "reason": "receiver had no fix", "record_utc": tunnel["position"]["record_utc"]}
    assert unplugged["position"]["fix"] is False  # no data at all: stated as no fix, not the 19 s position


def test_gpx_track_follows_the_route_and_breaks_in_the_tunnel(exported) -> None:
    route, report, gpx, _ = exported
    assert report["location"]["gpx"] == gpx.name
    tree = ET.parse(gpx)
    segments = tree.getroot().findall(f"{GPX}trk/{GPX}trkseg")
    assert len(segments) == 3  # before the tunnel, between tunnel and unplug, after the replug
    points = [pt for seg in segments for pt in seg.findall(f"{GPX}trkpt")]
    seconds = []
    for pt in points:
        when = pt.find(f"{GPX}time").text
        t = int(when[14:16]) * 60 + int(when[17:19])
        seconds.append(t)
        lat, lon, _, _ = route.state(t)
        hdop = float(pt.find(f"{GPX}hdop").text)
        assert distance_m(float(pt.get("lat")), float(pt.get("lon")), lat, lon) <= hdop * UERE_M
    # the corrupted epoch at 7 s is short one sentence but still a fix; tunnel 12-15, unplugged 20-24
    assert seconds == [s for s in range(SECONDS) if not 12 <= s < 16 and not 20 <= s < 25]
    assert report["location"]["no_fix_records"] >= 4


def test_garbage_and_bad_checksums_were_counted(exported) -> None:
    *_, stats = exported
    assert stats["bad"] >= 1 and stats["garbage"] >= 1 and stats["disconnects"] == 1


def test_each_segment_states_its_clock_error(exported) -> None:
    _, report, _, _ = exported
    bounds = report["clock"]["error_bounds"]
    assert len(bounds) == 3
    errors = [b["error_us"] for b in bounds]
    assert all(b["reference"] == 1 for b in bounds) and errors[0] >= 20_000
    assert errors == sorted(errors)  # the bound grows with the time since the dock sync
    assert "dock sync" in bounds[-1]["statement"]
