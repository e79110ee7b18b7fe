"""A simulated GPS receiver: NMEA 0183 on a real pty, as a u-blox module on a UART writes it.

The device end opens ``path`` (a symlink to the pty's slave, like udev's ``/dev/serial/by-id``
names) with pyserial, exactly as it opens ``/dev/ttyAMA0`` on a Pi. Each epoch the twin
writes RMC, GGA and GSA (pynmeagps builds them, checksums included) for a ``Route`` that
moves with a speed and heading. Faults, each on demand and deterministic:

- a tunnel (``Route.tunnels``): the receiver reports no fix (RMC status V, GGA quality 0);
- ``corrupt_next``: sentences with a wrong checksum;
- ``garbage``: random bytes between sentences (line noise, a baud-rate glitch);
- ``unplug()`` / ``plug()``: the receiver vanishes (the pty closes: the reader sees an
  error, the symlink disappears) and comes back on a fresh pty behind the same path.

Tests drive it with ``emit(t)`` (sim seconds, no sleeping); ``start(rate_hz, sensor_clock)``
runs it on a thread, paced by the camera's sensor clock (so a "fast" sim camera gets a
fast GPS too), or by the wall clock without one.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import pty
import random
import threading
import tty
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pynmeagps import GET, NMEAMessage

EARTH_RADIUS_M = 6_371_000.0
UERE_M = 5.0  # user equivalent range error: stated accuracy = HDOP x UERE


@dataclass(frozen=True)
class Leg:
    heading_deg: float
    speed_mps: float
    duration_s: float


@dataclass
class Route:
    """Where the receiver is at sim time ``t`` seconds: legs of constant heading and speed."""

    start_lat: float = 51.5007
    start_lon: float = -0.1246
    alt_m: float = 21.0
    legs: list[Leg] = field(default_factory=lambda: [Leg(90.0, 1.5, 60.0), Leg(0.0, 12.0, 120.0),
                                                     Leg(225.0, 1.4, 3600.0)])
    tunnels: list[tuple[float, float]] = field(default_factory=list)  # (from_s, to_s): no fix
    start_utc: dt.datetime = dt.datetime(2026, 11, 30, 14, 0, 0, tzinfo=dt.timezone.utc)

    def state(self, t: float) -> tuple[float, float, float, float]:
        """(lat, lon, speed m/s, heading degrees) at ``t`` s: dead reckoning along the legs."""
        lat, lon = self.start_lat, self.start_lon
        elapsed, speed, heading = 0.0, 0.0, 0.0
        for leg in self.legs:
            step = min(leg.duration_s, max(0.0, t - elapsed))
            lat, lon = _move(lat, lon, leg.heading_deg, leg.speed_mps * step)
            elapsed += leg.duration_s
            speed, heading = leg.speed_mps, leg.heading_deg
            if t < elapsed:
                break
        else:
            speed = 0.0
        return lat, lon, speed, heading

    def in_tunnel(self, t: float) -> bool:
        return any(a <= t < b for a, b in self.tunnels)

    def utc(self, t: float) -> dt.datetime:
        return self.start_utc + dt.timedelta(seconds=t)


def _move(lat: float, lon: float, heading_deg: float, metres: float) -> tuple[float, float]:
    h = math.radians(heading_deg)
    dlat = metres * math.cos(h) / EARTH_RADIUS_M
    dlon = metres * math.sin(h) / (EARTH_RADIUS_M * math.cos(math.radians(lat)))
    return lat + math.degrees(dlat), lon + math.degrees(dlon)


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine): what tests compare exported fixes to the route with."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (math.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(a))


def nmea_epoch(route: Route, t: float, *, noise_m: float = 0.0, rng: random.Random | None = None,
               satellites: int = 9, hdop: float = 0.8, utc: dt.datetime | None = None) -> list[bytes]:
    """The RMC, GGA and GSA sentences a receiver sends for sim time ``t`` (its UTC: ``utc``, or the route's)."""
    utc = route.utc(t) if utc is None else utc
    time, date = utc.time().replace(tzinfo=None), utc.date()
    if route.in_tunnel(t):
        return [
            NMEAMessage("GP", "RMC", GET, time=time, status="V", date=date, posMode="N").serialize(),
            NMEAMessage("GP", "GGA", GET, time=time, quality=0, numSV=0).serialize(),
            NMEAMessage("GP", "GSA", GET, opMode="A", navMode=1).serialize(),
        ]
    lat, lon, speed, heading = route.state(t)
    if noise_m and rng is not None:
        lat, lon = _move(lat, lon, rng.uniform(0, 360), rng.uniform(0, noise_m))
    ns, ew = ("N" if lat >= 0 else "S"), ("E" if lon >= 0 else "W")
    sats = {f"svid_{i + 1:02d}": 2 * i + 1 for i in range(min(satellites, 12))}
    return [
        NMEAMessage("GP", "RMC", GET, time=time, status="A", lat=lat, NS=ns, lon=lon, EW=ew,
                    spd=round(speed / 0.514444, 2), cog=round(heading, 2), date=date, posMode="A").serialize(),
        NMEAMessage("GP", "GGA", GET, time=time, lat=lat, NS=ns, lon=lon, EW=ew, quality=1, numSV=satellites,
                    HDOP=hdop, alt=route.alt_m, altUnit="M", sep=47.0, sepUnit="M").serialize(),
        NMEAMessage("GP", "GSA", GET, opMode="A", navMode=3, PDOP=round(hdop * 1.6, 1), HDOP=hdop,
                    VDOP=round(hdop * 1.3, 1), **sats).serialize(),
    ]


class SimGps:
    """A GPS receiver on a pty behind the symlink ``path``; ``emit(t)`` writes one epoch."""

    def __init__(self, path: str | Path, route: Route | None = None, *, seed: int = 1, noise_m: float = 2.0,
                 hdop: float = 0.8, utc: Callable[[], dt.datetime] | None = None) -> None:
        self.path = Path(path)
        self.route = route or Route()
        self.noise_m, self.hdop = noise_m, hdop
        self.utc = utc  # "true" UTC now (the simulated device's system time); default: the route's
        self.rng = random.Random(seed)
        self.corrupt_next = 0   # sentences still to send with a wrong checksum
        self.garbage = 0        # random bytes to send before the next epoch
        self.sent = {"epochs": 0, "sentences": 0, "corrupted": 0, "garbage_bytes": 0}
        self._lock = threading.Lock()
        self._master: int | None = None
        self._slave: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.plug()

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def plug(self) -> None:
        """Connect (again): a fresh pty, the symlink pointed at it."""
        with self._lock:
            if self._master is not None:
                return
            master, slave = pty.openpty()
            tty.setraw(slave)
            os.set_blocking(master, False)  # nobody reading: bytes are lost, as on a real UART
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.unlink(missing_ok=True)
            os.symlink(os.ttyname(slave), tmp)
            os.replace(tmp, self.path)
            self._master, self._slave = master, slave

    def unplug(self) -> None:
        """Pull the receiver's cable: the pty closes under the reader and the symlink vanishes."""
        with self._lock:
            if self._master is None:
                return
            self.path.unlink(missing_ok=True)
            for fd in (self._master, self._slave):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._master = self._slave = None

    def emit(self, t: float) -> list[bytes]:
        """Write the epoch at sim time ``t`` (with any faults due); returns the sentences sent."""
        sentences = nmea_epoch(self.route, t, noise_m=self.noise_m, rng=self.rng, hdop=self.hdop,
                               utc=self.utc() if self.utc is not None else None)
        out = []
        if self.garbage:
            out.append(bytes(self.rng.randrange(256) for _ in range(self.garbage)))
            self.sent["garbage_bytes"] += self.garbage
            self.garbage = 0
        for s in sentences:
            if self.corrupt_next:
                self.corrupt_next -= 1
                self.sent["corrupted"] += 1
                s = s[:-4] + (b"00" if s[-4:-2] != b"00" else b"11") + b"\r\n"
            out.append(s)
        self._write(b"".join(out))
        self.sent["epochs"] += 1
        self.sent["sentences"] += len(sentences)
        return sentences

    def _write(self, data: bytes) -> None:
        with self._lock:
            if self._master is None:
                return  # unplugged: the bytes go nowhere, as on a real cable
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._master, view):]
            except (BlockingIOError, OSError):
                pass  # the reader is not keeping up or has gone: the receiver does not wait

    def start(self, rate_hz: float = 1.0, sensor_clock: Callable[[], int | None] | None = None) -> None:
        """Emit epochs on a thread: one per 1/``rate_hz`` s of ``sensor_clock`` (µs), or of wall time."""
        def run() -> None:
            n = 0
            if sensor_clock is None:
                while not self._stop.wait(1.0 / rate_hz):
                    self.emit(n / rate_hz)
                    n += 1
                return
            while not self._stop.wait(0.01):
                now = sensor_clock()
                while now is not None and n * 1e6 / rate_hz <= now and not self._stop.is_set():
                    self.emit(n / rate_hz)
                    n += 1
        self._thread = threading.Thread(target=run, name="sim-gps", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.unplug()

    def __enter__(self) -> "SimGps":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
