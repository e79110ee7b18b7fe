"""Location records in the chunk plaintext: codec, strictness, and the FORMAT.md vectors."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from hypothesis import example, given, strategies as st

from buffer.frame import Frame
from recorder.chunk import ChunkFormatError, decode_chunk, encode_chunk
from recorder.location import (
    FIX_LEN, LOCATION_FLAG, Fix, LocationFormatError, decode_fix, decode_locations, encode_fix, encode_records,
)

SPEC = Path(__file__).resolve().parents[2] / "docs" / "FORMAT.md"
WALK = Fix(1_500_000, 1, 3, 9, 51.5007123, -0.1245817, 21.5, 0.8, 1.5, 90.0, 1_796_047_205_000_000)


def spec_vectors() -> dict[str, str]:
    block = re.search(r"<!-- location-vectors:begin -->\n```text\n(.*?)```", SPEC.read_text(), re.S)
    assert block, "docs/FORMAT.md has no location vector block"
    return dict(line.split(" = ", 1) for line in block.group(1).strip().splitlines())


def test_spec_vectors_match_the_codec() -> None:
    v = spec_vectors()
    assert encode_records([WALK]).hex() == v["fix_record"]
    assert encode_records([Fix.no_fix(2_500_000, satellites=2)]).hex() == v["no_fix_record"]
    both = bytes.fromhex(v["chunk_plaintext"])
    frames = decode_chunk(both)
    assert [(f.timestamp_us, f.keyframe, f.data) for f in frames] == [(1_000_000, True, b"\x00\x00\x00\x01\x65IDR")]
    fixes = decode_locations(both)
    assert fixes == [WALK, Fix.no_fix(2_500_000, satellites=2)]
    # the spec's field table, read by hand: lat/lon in 1e-7 degrees, alt in mm
    data = bytes.fromhex(v["fix_record"])[13:]
    version, quality, mode, sats, lat, lon, alt = struct.unpack(">BBBBiii", data[:16])
    assert (version, quality, mode, sats, lat, lon, alt) == (1, 1, 3, 9, 515007123, -1245817, 21500)


def test_frames_and_fixes_share_a_chunk_and_decode_apart() -> None:
    frames = [Frame(b"\x00\x00\x00\x01\x65key", True, 0), Frame(b"\x00\x00\x00\x01\x41p", False, 100_000)]
    fixes = [WALK, Fix.no_fix(1_600_000)]
    plaintext = encode_chunk(frames) + encode_records(fixes)
    assert decode_chunk(plaintext) == frames
    assert decode_locations(plaintext) == fixes
    assert decode_locations(encode_chunk(frames)) == []


def test_no_fix_never_carries_a_position() -> None:
    record = bytearray(encode_fix(Fix.no_fix(0)))
    record[4:8] = struct.pack(">i", 515007123)
    with pytest.raises(LocationFormatError, match="no-fix"):
        decode_fix(0, bytes(record))
    assert not Fix(0, 0, 1, 0, lat=51.0, lon=0.0).canonical().has_fix  # quality 0: the position is dropped


@pytest.mark.parametrize("offset,value,match", [
    (0, b"\x02", "version"), (22, b"\x00\x01", "reserved"), (20, struct.pack(">H", 36_000), "course"),
    (4, struct.pack(">i", 900_000_001), "out of range"),
])
def test_bad_records_are_refused(offset: int, value: bytes, match: str) -> None:
    record = bytearray(encode_fix(WALK))
    record[offset:offset + len(value)] = value
    with pytest.raises(LocationFormatError, match=match):
        decode_fix(0, bytes(record))


def test_chunk_refuses_a_location_record_of_the_wrong_size() -> None:
    bad = struct.pack(">BQI", LOCATION_FLAG, 0, FIX_LEN - 1) + bytes(FIX_LEN - 1)
    with pytest.raises(ChunkFormatError, match="location"):
        decode_chunk(bad)
    with pytest.raises(ChunkFormatError):  # keyframe bit together with the location bit
        decode_chunk(struct.pack(">BQI", LOCATION_FLAG | 1, 0, FIX_LEN) + encode_fix(WALK))


@example(lat=0.0, lon=0.0, alt=0.0, hdop=0.125, course=0.0, ts=0)  # exactly half a unit: rounds to even
@given(lat=st.floats(-90, 90), lon=st.floats(-180, 180), alt=st.floats(-1000, 9000), hdop=st.floats(0, 99),
       course=st.floats(0, 359.99), ts=st.integers(0, 2**63 - 1))
def test_round_trip_within_the_record_units(lat, lon, alt, hdop, course, ts) -> None:
    fix = Fix(ts, 1, 3, 7, lat, lon, alt, hdop, 3.0, course, 1_796_047_205_123_456)
    back = decode_fix(ts, encode_fix(fix))
    eps = 1e-9  # half a unit is the most rounding can lose; floats add their own last bit
    assert abs(back.lat - lat) <= 0.5e-7 + eps and abs(back.lon - lon) <= 0.5e-7 + eps
    assert abs(back.alt_m - alt) <= 0.0005 + eps and abs(back.hdop - hdop) <= 0.005 + eps
    assert encode_fix(back) == encode_fix(fix)  # canonical: re-encoding gives the same bytes
