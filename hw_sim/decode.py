"""Test helpers: decode Annex B H.264 with PyAV and read back sim-camera frame numbers.

Used by the capture tests and by export tests to prove, from the pixels, which
frames a stream really holds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import numpy as np

from hw_sim.camera import read_frame_number

__all__ = ["decode_frame_numbers", "decode_images", "nal_unit_types"]

_START_CODE = re.compile(b"\x00\x00\x01")


def nal_unit_types(annexb: bytes) -> list[int]:
    """The ``nal_unit_type`` of every NAL unit in an Annex B byte string (7 = SPS, 8 = PPS, 5 = IDR)."""
    return [annexb[m.end()] & 0x1F for m in _START_CODE.finditer(annexb) if m.end() < len(annexb)]


def decode_images(annexb: bytes | Iterable[bytes]) -> Iterator[np.ndarray]:
    """Decode an Annex B H.264 stream (bytes, or access units in order) to greyscale images.

    A fresh decoder each call, so the stream must start with SPS/PPS and a keyframe.
    """
    import av

    ctx = av.CodecContext.create("h264", "r")
    chunks = [annexb] if isinstance(annexb, (bytes, bytearray, memoryview)) else annexb
    packets = []
    for chunk in chunks:
        packets.extend(ctx.parse(bytes(chunk)))
    packets.extend(ctx.parse(None))
    for packet in packets:
        for frame in ctx.decode(packet):
            yield frame.to_ndarray(format="gray")
    for frame in ctx.decode(None):
        yield frame.to_ndarray(format="gray")


def decode_frame_numbers(annexb: bytes | Iterable[bytes]) -> list[int]:
    """Frame numbers of every picture in an Annex B stream made from :class:`SimCamera` frames."""
    return [read_frame_number(image) for image in decode_images(annexb)]
