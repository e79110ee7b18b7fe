"""Plaintext encoding of one chunk (one GOP of video and the audio heard with it), before sealing.

Layout 1 (video only, written for every chunk that holds no audio) is the entries back to
back; layout 2 (a chunk with audio) starts with two bytes, then the same entries::

    u8  layout         2            (layout 1 has no such byte: it starts with a
    u8  audio_format   1 = AAC-LC    keyframe's flags, 0x01, or is empty)
                       48 kHz mono

    entry:
    u8  flags          bit 0: keyframe (video only); bit 1: audio; bit 2: a location record
                       (recorder.location); other bits zero
    u64 timestamp_us   big-endian, sensor clock (audio: its first sample)
    u32 length         big-endian, bytes of data that follow
    ..  data           H.264 Annex B access unit, or one raw AAC-LC access unit

This plaintext only ever exists in RAM on the device; docs/FORMAT.md specifies it.
"""

from __future__ import annotations

import struct
from typing import Iterable, Sequence

from buffer.frame import Frame
from recorder.location import FIX_LEN, LOCATION_FLAG

_HEAD = struct.Struct(">BQI")
MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_AUDIO_BYTES = 8192  # an AAC-LC mono access unit is at most 768 bytes
LAYOUT_VIDEO = 1
LAYOUT_AUDIO = 2
AUDIO_AAC_LC_48K_MONO = 1
_LAYOUT_2_PREFIX = bytes((LAYOUT_AUDIO, AUDIO_AAC_LC_48K_MONO))
KEYFRAME, AUDIO = 1, 2


class ChunkFormatError(ValueError):
    """A chunk's plaintext does not parse as frames."""


def encode_chunk(frames: Iterable[Frame]) -> bytes:
    """Pack frames (video and audio, in arrival order) into one chunk plaintext.

    Layout 1 when no frame is audio (byte for byte what a video-only device wrote), else layout 2.
    """
    parts: list[bytes] = []
    has_audio = False
    for f in frames:
        audio = f.audio
        if audio:
            has_audio = True
            if f.keyframe:
                raise ChunkFormatError("an audio frame cannot be a keyframe")
            if not 0 < len(f.data) <= MAX_AUDIO_BYTES:
                raise ChunkFormatError(f"audio frame of {len(f.data)} bytes (1..{MAX_AUDIO_BYTES} allowed)")
        if not 0 <= f.timestamp_us < 2**64:
            raise ChunkFormatError(f"frame timestamp {f.timestamp_us} µs out of range")
        parts.append(_HEAD.pack((AUDIO if audio else 0) | (1 if f.keyframe else 0), f.timestamp_us, len(f.data)))
        parts.append(f.data)
    if has_audio:
        parts.insert(0, _LAYOUT_2_PREFIX)
    return b"".join(parts)


def chunk_layout(data: bytes) -> int:
    """1 or 2, from the first byte (see the module docstring); an empty chunk is layout 1."""
    if data[:1] == bytes((LAYOUT_AUDIO,)):
        return LAYOUT_AUDIO
    return LAYOUT_VIDEO


def decode_chunk(data: bytes) -> list[Frame]:
    """Unpack a chunk plaintext of either layout; raise ChunkFormatError on anything malformed."""
    frames: list[Frame] = []
    view = memoryview(data)
    pos = 0
    layout = chunk_layout(data)
    if layout == LAYOUT_AUDIO:
        if len(view) < 2 or view[1] != AUDIO_AAC_LC_48K_MONO:
            raise ChunkFormatError(f"unknown audio format {view[1] if len(view) > 1 else None!r} in a layout 2 chunk")
        pos = 2
    allowed = KEYFRAME | (AUDIO if layout == LAYOUT_AUDIO else 0)
    last_audio_ts = -1
    while pos < len(view):
        if len(view) - pos < _HEAD.size:
            raise ChunkFormatError(f"truncated frame header at byte {pos}")
        flags, ts, length = _HEAD.unpack_from(view, pos)
        if flags == LOCATION_FLAG:  # a GPS fix: recorder.location.decode_locations reads it
            if length != FIX_LEN or len(view) - pos - _HEAD.size < length:
                raise ChunkFormatError(f"bad location record at byte {pos}")
            pos += _HEAD.size + length
            continue
        if flags & ~allowed or flags == KEYFRAME | AUDIO:
            raise ChunkFormatError(f"unknown frame flags {flags:#x} at byte {pos}")
        audio = bool(flags & AUDIO)
        if length > (MAX_AUDIO_BYTES if audio else MAX_FRAME_BYTES) or (audio and length == 0):
            raise ChunkFormatError(f"{'audio ' if audio else ''}frame of {length} bytes at byte {pos} "
                                   "is outside the limits")
        if audio:
            if ts <= last_audio_ts:
                raise ChunkFormatError(f"audio timestamp {ts} µs at byte {pos} does not follow {last_audio_ts} µs")
            last_audio_ts = ts
        pos += _HEAD.size
        if len(view) - pos < length:
            raise ChunkFormatError(f"truncated frame data at byte {pos}")
        frames.append(Frame(bytes(view[pos:pos + length]), bool(flags & KEYFRAME), ts, audio))
        pos += length
    if layout == LAYOUT_AUDIO and last_audio_ts < 0:
        raise ChunkFormatError("a layout 2 chunk holds no audio frame (it must be written as layout 1)")
    return frames


def video_span(frames: Sequence[Frame]) -> tuple[int, int, int]:
    """``(count, first_ts_us, last_ts_us)`` of the video frames: what a chunk record's meta states.

    Audio rides along in the chunk but is not counted: the record and the manifest count frames
    of video, as they did before sound. ``(0, 0, 0)`` when there is no video frame.
    """
    video = [f for f in frames if not f.audio]
    if not video:
        return 0, 0, 0
    return len(video), video[0].timestamp_us, video[-1].timestamp_us
