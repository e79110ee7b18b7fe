"""Still frames for the HTML report: decoded from the exported MP4 itself, so they show what it holds.

Decoding (not re-encoding) with PyAV: seek to the keyframe before each wanted time and decode
forward to the first frame at or after it. Each still is a JPEG small enough to inline.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

THUMB_WIDTH = 320
JPEG_QUALITY = 80


@dataclass(frozen=True)
class Thumbnail:
    """One still: what it marks, where in the MP4 (seconds from its start) and the JPEG bytes."""

    label: str
    offset_s: float
    jpeg: bytes

    @property
    def data_uri(self) -> str:
        return "data:image/jpeg;base64," + base64.b64encode(self.jpeg).decode()


def thumbnails(mp4: Path, wanted: list[tuple[str, float]]) -> list[Thumbnail]:
    """A thumbnail for each ``(label, offset_s)``; a time past the end gives the last frame."""
    import av
    import cv2

    stills = []
    with av.open(str(mp4)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threads: a still may need a whole GOP decoded
        for label, offset_s in wanted:
            image = _frame_at(container, stream, max(offset_s, 0.0))
            if image is None:
                log.warning("%s: no frame decodes at %.3f s; no thumbnail for %s", mp4.name, offset_s, label)
                continue
            height = max(2, round(image.shape[0] * THUMB_WIDTH / image.shape[1]))
            small = cv2.resize(image, (THUMB_WIDTH, height), interpolation=cv2.INTER_AREA)
            ok, jpeg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if ok:
                stills.append(Thumbnail(label, offset_s, jpeg.tobytes()))
    return stills


def _frame_at(container, stream, offset_s: float):
    """The BGR image of the first frame at or after ``offset_s``, else the last one before it."""
    target = int(offset_s / stream.time_base) + (stream.start_time or 0)
    container.seek(target, stream=stream, backward=True, any_frame=False)
    last = None
    for frame in container.decode(stream):
        last = frame
        if frame.pts is not None and frame.pts >= target:
            break
    return None if last is None else last.to_ndarray(format="bgr24")
