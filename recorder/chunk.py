"""Plaintext encoding of one chunk (one GOP) of frames, before it is sealed.

A chunk is the frames back to back, each as::

    u8  flags          bit 0: keyframe; bit 2: a location record (recorder.location); others zero
    u64 timestamp_us   big-endian, sensor clock
    u32 length         big-endian, bytes of data that follow
    ..  data           H.264 Annex B access unit

This plaintext only ever exists in RAM on the device; docs/FORMAT.md specifies it.
"""

from __future__ import annotations

import struct
from typing import Iterable

from buffer.frame import Frame
from recorder.location import FIX_LEN, LOCATION_FLAG

_HEAD = struct.Struct(">BQI")
MAX_FRAME_BYTES = 16 * 1024 * 1024


class ChunkFormatError(ValueError):
    """A chunk's plaintext does not parse as frames."""


def encode_chunk(frames: Iterable[Frame]) -> bytes:
    """Pack frames into one chunk plaintext."""
    parts: list[bytes] = []
    for f in frames:
        parts.append(_HEAD.pack(1 if f.keyframe else 0, f.timestamp_us, len(f.data)))
        parts.append(f.data)
    return b"".join(parts)


def decode_chunk(data: bytes) -> list[Frame]:
    """Unpack a chunk plaintext; raise ChunkFormatError on anything malformed."""
    frames: list[Frame] = []
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        if len(view) - pos < _HEAD.size:
            raise ChunkFormatError(f"truncated frame header at byte {pos}")
        flags, ts, length = _HEAD.unpack_from(view, pos)
        if flags == LOCATION_FLAG:  # a GPS fix: recorder.location.decode_locations reads it
            if length != FIX_LEN or len(view) - pos - _HEAD.size < length:
                raise ChunkFormatError(f"bad location record at byte {pos}")
            pos += _HEAD.size + length
            continue
        if flags & ~1:
            raise ChunkFormatError(f"unknown frame flags {flags:#x} at byte {pos}")
        if length > MAX_FRAME_BYTES:
            raise ChunkFormatError(f"frame of {length} bytes at byte {pos} exceeds the limit")
        pos += _HEAD.size
        if len(view) - pos < length:
            raise ChunkFormatError(f"truncated frame data at byte {pos}")
        frames.append(Frame(bytes(view[pos:pos + length]), bool(flags & 1), ts))
        pos += length
    return frames
