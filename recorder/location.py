"""Location records inside a chunk's plaintext: where the camera was, sealed with the video.

Location is personal data, so it travels only inside the encrypted chunk plaintext (only the
agency can read it), and because each chunk's ciphertext hash is in the signed manifest,
every fix is signed with the footage it belongs to. A location record is a chunk entry
(``recorder.chunk``'s header) with ``flags`` = ``LOCATION_FLAG`` (bit 2), ``timestamp_us`` =
the sensor time when the fix arrived, and 32 bytes of data (docs/FORMAT.md, "Location
records")::

    u8  version = 1
    u8  quality      GGA fix quality: 0 no fix, 1 GPS, 2 DGPS, 3 PPS, 4 RTK, 5 float RTK, 6 estimated
    u8  mode         GSA fix mode: 0 unknown, 1 no fix, 2 2D, 3 3D
    u8  satellites   used in the fix
    i32 lat_e7       degrees x 1e7, north positive (0 when no fix)
    i32 lon_e7       degrees x 1e7, east positive (0 when no fix)
    i32 alt_mm       above mean sea level; INT32_MIN unknown
    u16 hdop_centi   HDOP x 100; 0xFFFF unknown
    u16 speed_cm_s   speed over ground; 0xFFFF unknown
    u16 course_centi course over ground, degrees x 100 (0..35999); 0xFFFF unknown
    u16 reserved = 0
    i64 gps_utc_us   the receiver's UTC of the fix, µs since 1970; INT64_MIN unknown

A record with quality 0 states "no fix" (position, altitude, HDOP, speed, course unknown):
the device writes it when the receiver reports no fix or has gone silent, never an older
fix in its place.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Iterable

LOCATION_FLAG = 0x04
FIX_VERSION = 1
FIX_LEN = 32
_ENTRY_HEAD = struct.Struct(">BQI")  # recorder.chunk's entry header: flags, timestamp_us, length
_FIX = struct.Struct(">BBBBiiiHHHHq")
U16_UNKNOWN = 0xFFFF
ALT_UNKNOWN = -(2**31)
UTC_UNKNOWN = -(2**63)


class LocationFormatError(ValueError):
    """A location record does not parse, or is not in canonical form."""


@dataclass(frozen=True)
class Fix:
    """One GPS fix (or the statement that there was none) at a sensor time."""

    sensor_ts_us: int
    quality: int = 0
    mode: int = 0
    satellites: int = 0
    lat: float | None = None
    lon: float | None = None
    alt_m: float | None = None
    hdop: float | None = None
    speed_mps: float | None = None
    course_deg: float | None = None
    gps_utc_us: int | None = None

    @property
    def has_fix(self) -> bool:
        return self.quality != 0

    @classmethod
    def no_fix(cls, sensor_ts_us: int, *, satellites: int = 0, gps_utc_us: int | None = None) -> "Fix":
        return cls(sensor_ts_us, 0, 1, satellites, gps_utc_us=gps_utc_us)

    def canonical(self) -> "Fix":
        """The fix as it reads back after encoding (rounded to the record's units)."""
        return decode_fix(self.sensor_ts_us, encode_fix(self))


def _scaled(value: float | None, scale: float, lo: int, hi: int, unknown: int, name: str) -> int:
    if value is None:
        return unknown
    if not math.isfinite(value):
        raise LocationFormatError(f"{name} {value!r} is not a finite number")
    n = round(value * scale)
    if not lo <= n <= hi:
        raise LocationFormatError(f"{name} {value!r} out of range")
    return n


def encode_fix(fix: Fix) -> bytes:
    """The 32-byte data of one location record."""
    if not 0 <= fix.quality <= 15 or not 0 <= fix.mode <= 3 or not 0 <= fix.satellites <= 255:
        raise LocationFormatError(f"fix quality/mode/satellites out of range: {fix}")
    if fix.has_fix:
        if fix.lat is None or fix.lon is None:
            raise LocationFormatError("a fix with quality > 0 needs a latitude and longitude")
        lat = _scaled(fix.lat, 1e7, -900_000_000, 900_000_000, 0, "latitude")
        lon = _scaled(fix.lon, 1e7, -1_800_000_000, 1_800_000_000, 0, "longitude")
        alt = _scaled(fix.alt_m, 1000, ALT_UNKNOWN + 1, 2**31 - 1, ALT_UNKNOWN, "altitude")
        hdop = _scaled(fix.hdop, 100, 0, U16_UNKNOWN - 1, U16_UNKNOWN, "HDOP")
        speed = _scaled(fix.speed_mps, 100, 0, U16_UNKNOWN - 1, U16_UNKNOWN, "speed")
        course = U16_UNKNOWN
        if fix.course_deg is not None:
            course = _scaled(fix.course_deg % 360, 100, 0, 36_000, U16_UNKNOWN, "course") % 36_000
    else:
        lat = lon = 0
        alt, hdop, speed, course = ALT_UNKNOWN, U16_UNKNOWN, U16_UNKNOWN, U16_UNKNOWN
    utc = UTC_UNKNOWN if fix.gps_utc_us is None else int(fix.gps_utc_us)
    if fix.gps_utc_us is not None and not UTC_UNKNOWN < utc < 2**63:
        raise LocationFormatError(f"GPS UTC {fix.gps_utc_us!r} out of range")
    return _FIX.pack(FIX_VERSION, fix.quality, fix.mode, fix.satellites, lat, lon, alt, hdop, speed, course, 0, utc)


def decode_fix(sensor_ts_us: int, data: bytes) -> Fix:
    """Parse one record's data strictly; LocationFormatError names what is wrong."""
    if len(data) != FIX_LEN:
        raise LocationFormatError(f"location record of {len(data)} bytes, not {FIX_LEN}")
    version, quality, mode, sats, lat, lon, alt, hdop, speed, course, reserved, utc = _FIX.unpack(data)
    if version != FIX_VERSION:
        raise LocationFormatError(f"location record version {version} is not supported")
    if reserved or quality > 15 or mode > 3:
        raise LocationFormatError("location record has reserved bits set")
    if course != U16_UNKNOWN and course >= 36_000:
        raise LocationFormatError(f"course {course / 100} degrees out of range")
    gps_utc = None if utc == UTC_UNKNOWN else utc
    if quality == 0:
        if (lat, lon, alt, hdop, speed, course) != (0, 0, ALT_UNKNOWN, U16_UNKNOWN, U16_UNKNOWN, U16_UNKNOWN):
            raise LocationFormatError("a no-fix record must not carry a position")
        return Fix(sensor_ts_us, 0, mode, sats, gps_utc_us=gps_utc)
    if not (-900_000_000 <= lat <= 900_000_000 and -1_800_000_000 <= lon <= 1_800_000_000):
        raise LocationFormatError(f"position {lat}, {lon} (1e-7 degrees) out of range")
    return Fix(sensor_ts_us, quality, mode, sats, lat / 1e7, lon / 1e7,
               None if alt == ALT_UNKNOWN else alt / 1000, None if hdop == U16_UNKNOWN else hdop / 100,
               None if speed == U16_UNKNOWN else speed / 100, None if course == U16_UNKNOWN else course / 100,
               gps_utc)


def encode_records(fixes: Iterable[Fix]) -> bytes:
    """Location records to append to a chunk plaintext (after its frames)."""
    return b"".join(_ENTRY_HEAD.pack(LOCATION_FLAG, f.sensor_ts_us, FIX_LEN) + encode_fix(f) for f in fixes)


def decode_locations(plaintext: bytes) -> list[Fix]:
    """Every location record in a chunk plaintext, in order; other entries are skipped.

    Entry framing errors are ``recorder.chunk.decode_chunk``'s to report; here a framing error
    or a bad record raises LocationFormatError.
    """
    fixes: list[Fix] = []
    view = memoryview(plaintext)
    pos = 2 if plaintext[:1] == b"\x02" else 0  # chunk layout 2 (with sound) starts with 2 bytes
    while pos < len(view):
        if len(view) - pos < _ENTRY_HEAD.size:
            raise LocationFormatError(f"truncated entry header at byte {pos}")
        flags, ts, length = _ENTRY_HEAD.unpack_from(view, pos)
        pos += _ENTRY_HEAD.size
        if len(view) - pos < length:
            raise LocationFormatError(f"truncated entry data at byte {pos}")
        if flags & LOCATION_FLAG:
            if flags != LOCATION_FLAG:
                raise LocationFormatError(f"location record at byte {pos} has other flag bits {flags:#x}")
            fixes.append(decode_fix(ts, bytes(view[pos:pos + length])))
        pos += length
    return fixes
