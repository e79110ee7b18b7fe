"""The GPS receiver seam: NMEA 0183 over a serial port, assembled into one fix per epoch.

Like the camera: a small protocol (``GpsReceiver``), a real reader (``SerialGps``: pyserial
plus pynmeagps, which checks every checksum) and a simulated twin (``hw_sim.gps.SimGps``,
which writes NMEA on a pty) behind the same port path; the composition root
(``firmware.device``) chooses the port. A receiver is the least trusted input a camera
has, so nothing it sends can stop the device: a bad checksum, a garbled or unknown
sentence is counted and skipped, an unplugged receiver is retried until it comes back.

``LocationLog`` decides which fixes are sealed with which chunk (the buffering policy) and
says "no fix" when the receiver has none or has gone silent, never repeating an old fix.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import threading
from dataclasses import dataclass
from typing import Callable, Protocol

import serial
from pynmeagps import VALCKSUM, NMEAReader

from recorder.location import Fix

log = logging.getLogger(__name__)

KNOTS = 0.514444  # m/s per knot
MAX_SENTENCE = 256  # NMEA allows 82; anything longer without a newline is garbage
Stamp = Callable[[], "tuple[int | None, float]"]  # (sensor time µs, device clock base s) now


class GpsError(Exception):
    """The GPS receiver was misconfigured (a bad port path or baud rate)."""


class GpsReceiver(Protocol):
    """What the device needs of a receiver: start, stop, and how it is doing."""

    connected: threading.Event
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def stats(self) -> dict[str, int]: ...


@dataclass
class _Epoch:
    """The sentences of one receiver epoch (one UTC time) seen so far."""

    time: dt.time | None
    sensor_us: int | None
    base_s: float
    rmc: object = None
    gga: object = None
    gsa: object = None


class NmeaAssembler:
    """Turns NMEA lines into ``Fix`` es: one per epoch, once its RMC, GGA and GSA are in.

    An epoch missing a sentence is still emitted when the next epoch's time arrives.
    ``on_fix(fix, base_s)`` gets the fix and the device clock's base time when the epoch's
    first sentence arrived (what a GPS time reference is measured against).
    """

    def __init__(self, on_fix: Callable[[Fix, float], None], stamp: Stamp) -> None:
        self.on_fix = on_fix
        self.stamp = stamp
        self.counts = collections.Counter()
        self._epoch: _Epoch | None = None

    def feed(self, line: bytes) -> None:
        """One line from the port (with or without CR LF); never raises on bad input."""
        line = line.strip(b"\r\n\x00 ")
        if not line:
            return
        start = line.rfind(b"$")
        if start != 0:
            self.counts["garbage"] += 1  # noise before a sentence, or no sentence at all
            if start < 0:
                return
            line = line[start:]
        try:
            msg = NMEAReader.parse(line + b"\r\n", validate=VALCKSUM)
        except Exception as exc:  # noqa: BLE001 - pynmeagps raises several types; all mean "bad sentence"
            self.counts["bad"] += 1
            log.debug("gps: skipped a bad sentence (%s)", exc)
            return
        if msg is None:
            self.counts["bad"] += 1
            return
        kind = getattr(msg, "msgID", "")
        if kind not in ("RMC", "GGA", "GSA"):
            self.counts["ignored"] += 1
            return
        self.counts["sentences"] += 1
        if kind == "GSA":
            if self._epoch is not None:
                self._epoch.gsa = msg
        else:
            when = getattr(msg, "time", None)
            if not isinstance(when, dt.time):
                when = None
            if self._epoch is None or self._epoch.time != when:
                self.flush()
                sensor_us, base_s = self.stamp()
                self._epoch = _Epoch(when, sensor_us, base_s)
            setattr(self._epoch, kind.lower(), msg)
        epoch = self._epoch
        if epoch is not None and epoch.rmc is not None and epoch.gga is not None and epoch.gsa is not None:
            self.flush()

    def flush(self) -> None:
        """Emit the epoch in progress, if it has a position sentence."""
        epoch, self._epoch = self._epoch, None
        if epoch is None or (epoch.rmc is None and epoch.gga is None):
            return
        if epoch.sensor_us is None:
            self.counts["unstamped"] += 1  # no camera time yet: nowhere to put it
            return
        try:
            fix = self._fix(epoch)
        except (TypeError, ValueError) as exc:  # a sentence with a checksum but nonsense fields
            self.counts["bad"] += 1
            log.debug("gps: skipped an epoch with bad fields (%s)", exc)
            return
        self.counts["fixes" if fix.has_fix else "no_fix"] += 1
        try:
            self.on_fix(fix, epoch.base_s)
        except Exception:  # noqa: BLE001 - a failing listener must not stop the receiver
            self.counts["listener_errors"] += 1
            log.exception("gps: fix listener failed")

    def _fix(self, e: _Epoch) -> Fix:
        rmc, gga, gsa = e.rmc, e.gga, e.gsa
        date = getattr(rmc, "date", None)
        utc = None
        if isinstance(date, dt.date) and e.time is not None:  # only RMC carries the date
            moment = dt.datetime.combine(date, e.time.replace(tzinfo=None), tzinfo=dt.timezone.utc)
            utc = round(moment.timestamp() * 1_000_000)
        mode = _int(getattr(gsa, "navMode", None)) or 0 if gsa is not None else 0
        quality = _int(getattr(gga, "quality", None)) if gga is not None else (1 if rmc.status == "A" else 0)
        sats = _int(getattr(gga, "numSV", None)) or 0 if gga is not None else 0
        if rmc is not None and rmc.status != "A":
            quality = 0
        source = gga if gga is not None else rmc
        lat, lon = getattr(source, "lat", ""), getattr(source, "lon", "")
        if not quality or lat == "" or lon == "":
            return Fix.no_fix(e.sensor_us, satellites=min(sats, 255), gps_utc_us=utc)
        speed = _float(getattr(rmc, "spd", None)) if rmc is not None else None
        return Fix(e.sensor_us, min(quality or 0, 15), min(mode, 3), min(sats, 255), float(lat), float(lon),
                   _float(getattr(gga, "alt", None)) if gga is not None else None,
                   _float(getattr(gga, "HDOP", None)) if gga is not None else None,
                   None if speed is None else speed * KNOTS,
                   _float(getattr(rmc, "cog", None)) if rmc is not None else None, utc)


def _int(value) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None


def _float(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


class SerialGps:
    """Reads NMEA from ``port`` on a thread; reconnects whenever the receiver comes back."""

    def __init__(self, port: str, baud: int, on_fix: Callable[[Fix, float], None], stamp: Stamp, *,
                 retry_s: float = 1.0, on_status: Callable[[str], None] | None = None) -> None:
        if not port:
            raise GpsError("gps: no serial port configured")
        self.port, self.baud, self.retry_s = port, baud, retry_s
        self.assembler = NmeaAssembler(on_fix, stamp)
        self.on_status = on_status
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gps-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def stats(self) -> dict[str, int]:
        return dict(self.assembler.counts)

    def _status(self, what: str) -> None:
        if self.on_status is not None:
            try:
                self.on_status(what)
            except Exception:  # noqa: BLE001 - a listener must not stop the reader
                log.exception("gps status listener failed")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                port = serial.Serial(self.port, self.baud, timeout=0.2)
            except (serial.SerialException, OSError, ValueError) as exc:
                self.assembler.counts["open_failures"] += 1
                if self.assembler.counts["open_failures"] == 1:
                    log.warning("gps: no receiver on %s yet (%s); retrying every %g s", self.port, exc, self.retry_s)
                self._stop.wait(self.retry_s)
                continue
            self.assembler.counts["connects"] += 1
            log.info("gps: receiver on %s", self.port)
            self.connected.set()
            self._status("connected")
            try:
                self._read(port)
            except (serial.SerialException, OSError) as exc:
                log.warning("gps: receiver on %s lost: %s", self.port, exc)
            finally:
                port.close()
                self.assembler.flush()
                self.connected.clear()
            if not self._stop.is_set():
                self.assembler.counts["disconnects"] += 1
                self._status("disconnected")
                self._stop.wait(self.retry_s)

    def _read(self, port: serial.Serial) -> None:
        while not self._stop.is_set():
            line = port.read_until(b"\n", MAX_SENTENCE)
            if line:
                self.assembler.feed(line)


class LocationLog:
    """Holds fixes in RAM and hands each chunk the ones it should seal (the buffering policy).

    ``pre_event=False`` (the default, as commercial cameras do): only fixes from the moment a
    recording starts are sealed; fixes during buffering stay in RAM for the pre-event window
    and are dropped. ``pre_event=True``: the pre-event chunks carry their fixes too.
    ``interval_s`` thins the fixes sealed (at most one per interval; a change between fix and
    no fix is always kept). When the newest fix is older than ``stale_s`` at the end of a
    chunk, the chunk says "no fix" instead.
    """

    def __init__(self, *, pre_event: bool = False, interval_s: float = 1.0, stale_s: float = 2.5,
                 window_s: float = 130.0) -> None:
        self.pre_event = pre_event
        self.interval_us = round(interval_s * 1e6)
        self.stale_us = round(stale_s * 1e6)
        self.window_us = round(window_s * 1e6)
        self._lock = threading.Lock()
        self._fixes: collections.deque[Fix] = collections.deque()
        self._since_us: int | None = None  # recording start (sensor time); None: not recording yet
        self._last_kept: Fix | None = None
        self._newest_us: int | None = None  # sensor time of the newest fix received

    def add(self, fix: Fix, base_s: float | None = None) -> None:
        """A fix from the receiver (the ``on_fix`` callback)."""
        with self._lock:
            self._newest_us = fix.sensor_ts_us
            last = self._last_kept
            if (last is not None and last.has_fix == fix.has_fix
                    and fix.sensor_ts_us - last.sensor_ts_us < self.interval_us):
                return
            self._last_kept = fix
            self._fixes.append(fix)
            while self._fixes and fix.sensor_ts_us - self._fixes[0].sensor_ts_us > self.window_us:
                self._fixes.popleft()

    def recording_started(self, sensor_us: int | None) -> None:
        """Fixes from ``sensor_us`` on belong to the recording (the device calls this on RECORDING)."""
        with self._lock:
            self._since_us = sensor_us if sensor_us is not None else 0

    def take(self, first_us: int, last_us: int) -> list[Fix]:
        """The fixes to seal with the chunk of frames ``first_us`` .. ``last_us`` (sensor time).

        Fixes up to ``last_us`` not yet sealed; none outside the policy; a single no-fix
        record when the receiver has said nothing recent.
        """
        with self._lock:
            out = []
            while self._fixes and self._fixes[0].sensor_ts_us <= last_us:
                out.append(self._fixes.popleft())
            if not self.pre_event:
                since = self._since_us
                if since is None or last_us < since:
                    return []
                out = [f for f in out if f.sensor_ts_us >= since]
            if not any(f.sensor_ts_us >= last_us - self.stale_us for f in out):
                newest = self._newest_us
                if newest is None or newest < last_us - self.stale_us:
                    out.append(Fix.no_fix(last_us))
            return out
