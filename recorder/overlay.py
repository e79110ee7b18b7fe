"""Burn the UTC time and device ID into each frame before it is encoded.

The text is part of the picture, so it survives any later remux or export and
tells a viewer when and by which camera a frame was taken. It sits in a band
along the bottom edge (:func:`overlay_region`); the top of the frame is left
free (the simulated camera draws its frame-number strip there).

On a Pi this runs in picamera2's ``pre_callback`` on the ``MappedArray`` of the
main stream; in simulation it runs in the capture loop of
:mod:`recorder.encoders`.
"""

from __future__ import annotations

import datetime as dt

import cv2
import numpy as np

__all__ = ["OverlayError", "burn_overlay", "overlay_region", "overlay_text"]

FONT = cv2.FONT_HERSHEY_SIMPLEX


class OverlayError(ValueError):
    """The overlay cannot be drawn: not an image we know, or a time that is not UTC-aware."""


def overlay_text(device_id: str, utc: dt.datetime) -> str:
    """The line burned into a frame: ISO 8601 UTC time to the millisecond, then the device ID."""
    if utc.tzinfo is None or utc.utcoffset() is None:
        raise OverlayError("overlay time must be timezone-aware (UTC), got a naive datetime")
    utc = utc.astimezone(dt.timezone.utc)
    stamp = utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
    return f"{stamp}  {device_id}"


def _metrics(height: int) -> tuple[float, int, int]:
    """Font scale, stroke thickness and margin, proportional to the frame height."""
    scale = max(0.35, height / 900)
    thickness = max(1, round(height / 500))
    margin = max(4, height // 60)
    return scale, thickness, margin


def overlay_region(width: int, height: int) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of the bottom band the overlay may draw in, for any text."""
    scale, thickness, margin = _metrics(height)
    (_, text_h), baseline = cv2.getTextSize("Ag", FONT, scale, thickness)
    band = text_h + baseline + 2 * margin
    return 0, max(0, (height - band) // 2 * 2), width, height  # even top: whole chroma rows in I420


def burn_overlay(
    image: np.ndarray, device_id: str, utc: dt.datetime, pixel_format: str = "bgr24"
) -> np.ndarray:
    """Draw ``overlay_text(device_id, utc)`` into ``image`` in place and return it.

    White text on a black box, readable on any scene. ``pixel_format`` is
    ``"bgr24"`` for BGR, BGRA/XBGR (picamera2 ``XBGR8888``) and greyscale
    images, or ``"yuv420p"`` for one I420 array of ``height * 3 / 2`` rows
    (picamera2 ``YUV420``): the text goes into the Y plane, the box is made
    neutral in U and V.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise OverlayError("overlay needs a uint8 numpy image")
    if pixel_format == "yuv420p":
        return _burn_i420(image, device_id, utc)
    if pixel_format != "bgr24":
        raise OverlayError(f"overlay cannot draw on pixel format {pixel_format!r}")
    _burn(image, device_id, utc)
    return image


def _burn_i420(image: np.ndarray, device_id: str, utc: dt.datetime) -> np.ndarray:
    rows, width = image.shape[:2] if image.ndim == 2 else (0, 0)
    height = rows * 2 // 3
    if image.ndim != 2 or rows % 3 or height % 4 or width % 2:
        raise OverlayError(f"not an I420 image (height * 3 / 2 rows): shape {image.shape}")
    if not image.flags.c_contiguous:
        raise OverlayError("an I420 image must be one contiguous array")
    box_right = _burn(image[:height], device_id, utc)
    _, y0, _, y1 = overlay_region(width, height)
    u = image[height : height + height // 4].reshape(height // 2, width // 2)
    v = image[height + height // 4 :].reshape(height // 2, width // 2)
    for plane in (u, v):
        plane[y0 // 2 : (y1 + 1) // 2, : (box_right + 1) // 2] = 128
    return image


def _burn(image: np.ndarray, device_id: str, utc: dt.datetime) -> int:
    """Draw on a BGR, BGRA or greyscale image; return the box's right edge (exclusive)."""
    if image.ndim == 2:
        channels = 1
    elif image.ndim == 3 and image.shape[2] in (3, 4):
        channels = image.shape[2]
    else:
        raise OverlayError(f"overlay cannot draw on an image of shape {image.shape}")
    text = overlay_text(device_id, utc)
    height, width = image.shape[:2]
    scale, thickness, margin = _metrics(height)
    (text_w, _), baseline = cv2.getTextSize(text, FONT, scale, thickness)
    _, y0, _, y1 = overlay_region(width, height)
    black = (0,) * channels if channels > 1 else 0
    white = (255,) * channels if channels > 1 else 255
    # Drawing into the band view clips long device IDs to it: nothing spills upwards.
    band = image[y0:y1]
    box_right = min(width, text_w + 2 * margin)
    cv2.rectangle(band, (0, 0), (box_right - 1, y1 - y0 - 1), black, cv2.FILLED)
    origin = (margin, y1 - y0 - margin - baseline)
    cv2.putText(band, text, origin, FONT, scale, white, thickness, cv2.LINE_AA)
    return box_right
