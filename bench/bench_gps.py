"""GPS cost: CPU per hour of NMEA parsing at 10 Hz, and bytes location adds per hour of footage.

Parsing: ``NmeaAssembler`` (pynmeagps with checksum validation, three sentences an epoch:
RMC, GGA, GSA) fed an hour's worth of sim epochs in memory; and the real path, the sim
receiver writing on a pty and ``SerialGps`` reading it with pyserial (the writer runs in
the same process, so that figure is a ceiling). Bytes: the location records sealed per hour
at the default ``interval_s`` = 1 s and at every 10 Hz fix, and the manifest clock block.
"""

from __future__ import annotations

import resource
import tempfile
import threading
import time
from pathlib import Path

from firmware.gps import LocationLog, NmeaAssembler, SerialGps
from hw_sim.gps import Route, SimGps, nmea_epoch
from recorder.location import Fix, encode_records
from secure_store.clock_bound import CLOCK_BLOCK

RATE_HZ = 10
PARSE_EPOCHS = 6000          # 10 minutes at 10 Hz, scaled to an hour
PTY_EPOCHS = 3000
FOOTAGE_BITRATE = 10_000_000  # the default [video] bitrate
SEGMENT_S = 10


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _parse_cpu_per_hour() -> tuple[float, int]:
    route = Route()
    lines = [s for i in range(PARSE_EPOCHS) for s in nmea_epoch(route, i / RATE_HZ)]
    got = []
    assembler = NmeaAssembler(lambda fix, base: got.append(fix), lambda: (len(got), 0.0))
    best = float("inf")
    for _ in range(3):
        got.clear()
        start = _cpu()
        for line in lines:
            assembler.feed(line)
        best = min(best, _cpu() - start)
    assert len(got) == PARSE_EPOCHS
    return best * 3600 * RATE_HZ / PARSE_EPOCHS, len(lines)


def _pty_cpu_per_hour() -> float:
    route = Route()
    with tempfile.TemporaryDirectory() as d:
        sim = SimGps(Path(d) / "gps", route, noise_m=0)
        done = threading.Event()
        count = [0]

        def on_fix(fix, base):
            count[0] += 1
            if count[0] >= PTY_EPOCHS:
                done.set()

        reader = SerialGps(str(sim.path), 115200, on_fix, lambda: (count[0], 0.0))
        reader.start()
        reader.connected.wait(10)
        start = _cpu()
        for i in range(PTY_EPOCHS + 1):
            sim.emit(i / RATE_HZ)
            if i % 20 == 0:
                time.sleep(0.002)  # let the reader drain the pty (a UART paces itself)
        done.wait(60)
        used = _cpu() - start
        reader.stop()
        sim.close()
    return used * 3600 * RATE_HZ / PTY_EPOCHS


def _bytes_per_hour(interval_s: float) -> int:
    log = LocationLog(pre_event=True, interval_s=interval_s, window_s=3600)
    route = Route()
    for i in range(3600 * RATE_HZ):
        lat, lon, speed, heading = route.state(i / RATE_HZ)
        log.add(Fix(i * 100_000, 1, 3, 9, lat, lon, 21.0, 0.8, speed, heading, 1_796_047_200_000_000 + i * 100_000))
    total = 0
    for chunk in range(3600):  # one-second GOP chunks
        total += len(encode_records(log.take(chunk * 1_000_000, chunk * 1_000_000 + 999_999)))
    return total


def run() -> str:
    parse_s, lines = _parse_cpu_per_hour()
    pty_s = _pty_cpu_per_hour()
    per_s = _bytes_per_hour(1.0)
    every = _bytes_per_hour(0.1)
    clock = CLOCK_BLOCK.size * 3600 // SEGMENT_S
    footage = FOOTAGE_BITRATE // 8 * 3600
    rows = [
        ("NMEA parse + assemble, 10 Hz (RMC+GGA+GSA), in memory", f"{parse_s:.1f} CPU s/h",
         f"{parse_s / 36:.2f} % of one core"),
        ("pty + pyserial + parse, 10 Hz (sim writer in the same process)", f"{pty_s:.1f} CPU s/h",
         f"{pty_s / 36:.2f} % of one core"),
        ("location records sealed, interval_s = 1 (default)", f"{per_s / 1000:,.1f} kB/h",
         f"{per_s / footage * 100:.4f} % of 10 Mbit/s footage"),
        ("location records sealed, every 10 Hz fix", f"{every / 1000:,.1f} kB/h",
         f"{every / footage * 100:.3f} % of 10 Mbit/s footage"),
        (f"manifest clock block ({CLOCK_BLOCK.size} B per {SEGMENT_S} s segment)", f"{clock / 1000:.1f} kB/h",
         f"{clock / footage * 100:.5f} %"),
    ]
    table = "## GPS and location (firmware.gps, recorder.location)\n\n| measure | per hour | share |\n|---|---:|---:|\n" + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    return (table + f"\n\nParse: best of 3 over {PARSE_EPOCHS} epochs ({lines} sentences), CPU time of this process "
            f"scaled to 36 000 epochs; pty: {PTY_EPOCHS} epochs at 115 200 baud, reader and sim writer in one "
            "process. A location record is 45 bytes inside the encrypted chunk (13-byte entry header + 32-byte "
            "fix); AES-GCM adds nothing per record. 2 CPUs shared with other jobs: figures are a ceiling.\n")
