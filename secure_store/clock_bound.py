"""How wrong a segment's clock may be: the signed clock block at the end of a manifest.

A manifest's times are ``timestamp_us + utc_offset_us``; the offset is the device clock's
idea of UTC, which drifts between references. The device keeps a model of that drift
(``firmware.clock``) and signs, per segment, an upper bound on the error of every UTC time
in it, with the reference the bound rests on (docs/FORMAT.md, "Clock error bound")::

    u8  clock_ref          0 none (clock never checked), 1 dock sync, 2 GPS time
    u64 clock_ref_age_us   device time from that reference to the end of the segment
    i32 clock_drift_ppb    measured drift, device fast positive; INT32_MIN not yet measured
    u64 clock_error_us     |UTC error| bound for the whole segment; 2**64-1 unknown
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

CLOCK_BLOCK = struct.Struct(">BQiQ")
REF_NONE, REF_DOCK, REF_GPS = 0, 1, 2
REF_NAMES = {REF_NONE: "none", REF_DOCK: "dock sync", REF_GPS: "GPS time"}
UNKNOWN_U64 = 2**64 - 1
CLOCK_REFERENCE, CLOCK_JUMP = "clock_reference", "clock_jump"  # audit events (firmware.clock writes them)
DRIFT_UNKNOWN = -(2**31)


@dataclass(frozen=True)
class ClockBound:
    """A bound on a segment's UTC error and what it rests on."""

    error_us: int | None = None          # None: unknown (no reference since the clock last jumped)
    ref: int = REF_NONE
    ref_age_us: int | None = None
    drift_ppb: int | None = None         # None: not measured yet (a default tolerance was assumed)
    applied_offset_us: int = field(default=0, compare=False)  # the clock offset the bound is for; not encoded

    def encode(self) -> bytes:
        drift = DRIFT_UNKNOWN if self.drift_ppb is None else max(DRIFT_UNKNOWN + 1, min(2**31 - 1, self.drift_ppb))
        return CLOCK_BLOCK.pack(self.ref, _u64(self.ref_age_us), drift, _u64(self.error_us))

    @classmethod
    def decode(cls, data: bytes) -> "ClockBound":
        """Parse the block; ValueError names what is wrong (the manifest parser rewraps it)."""
        ref, age, drift, error = CLOCK_BLOCK.unpack(data)
        if ref not in REF_NAMES:
            raise ValueError(f"unknown clock_ref {ref}")
        if ref == REF_NONE and (age != UNKNOWN_U64 or error != UNKNOWN_U64):
            raise ValueError("clock_ref none with an age or error bound")
        return cls(None if error == UNKNOWN_U64 else error, ref, None if age == UNKNOWN_U64 else age,
                   None if drift == DRIFT_UNKNOWN else drift)

    def describe(self) -> str:
        """In words, e.g. ``dock sync 3.0 h ago, measured drift +4.0 ppm -> +-45.0 ms``."""
        if self.error_us is None or self.ref == REF_NONE:
            return "clock error unknown (no time reference since the clock was last set or jumped)"
        drift = ("drift not yet measured" if self.drift_ppb is None
                 else f"measured drift {self.drift_ppb / 1000:+.1f} ppm")
        return f"{REF_NAMES[self.ref]} {_age(self.ref_age_us or 0)} ago, {drift} -> +-{self.error_us / 1000:.1f} ms"


UNKNOWN = ClockBound()


def worse(a: ClockBound | None, b: ClockBound | None) -> ClockBound:
    """The larger of two bounds (unknown is the largest)."""
    a, b = a or UNKNOWN, b or UNKNOWN
    if a.error_us is None:
        return a
    if b.error_us is None:
        return b
    return a if a.error_us >= b.error_us else b


def _u64(value: int | None) -> int:
    return UNKNOWN_U64 if value is None else max(0, min(UNKNOWN_U64 - 1, int(value)))


def _age(us: int) -> str:
    s = us / 1e6
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"
