"""A deterministic synthetic camera whose frames carry their own number.

Each frame shows a moving colour pattern with a little sensor-like noise and a
bouncing square, so the encoder has real motion to code, and a *number strip*
in the top-left corner: 32 black/white blocks (24 bits of frame number and an
8-bit check) large enough to survive H.264 at modest bitrates. Tests read the
number back after encode and decode to prove no frame was lost, duplicated or
reordered anywhere in the pipeline.

Two pixel formats, named as FFmpeg/PyAV name them:

- ``"bgr24"`` (default): ``uint8`` arrays of shape ``(height, width, 3)``, what
  OpenCV draws on and what picamera2's ``"RGB888"`` main stream delivers;
- ``"yuv420p"``: planar I420 in one ``uint8`` array of shape
  ``(height * 3 // 2, width)`` (Y rows, then U, then V), what picamera2's
  ``"YUV420"`` stream delivers and what libx264 encodes without a colour
  conversion (about 11 ms a frame saved at 1080p, see BENCHMARKS.md).

Timestamps are ``round(frame_number * 1e6 / fps)`` µs: spaced 1/fps apart
without drift. The ``"real"`` clock paces frames to wall time like a sensor;
the ``"fast"`` clock delivers them as fast as the CPU allows. Unlike a sensor,
a late consumer makes the sim camera late, never drop frames: it keeps every
number, which is what the tests count on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

__all__ = [
    "FrameNumberError",
    "SimCamera",
    "STRIP_BITS",
    "block_size",
    "read_frame_number",
    "strip_region",
]

NUMBER_BITS = 24
CHECK_BITS = 8
STRIP_BITS = NUMBER_BITS + CHECK_BITS
STRIP_COLUMNS = 16
STRIP_ROWS = STRIP_BITS // STRIP_COLUMNS
MAX_FRAME_NUMBER = (1 << NUMBER_BITS) - 1
SQUARE_BGR = (40, 200, 240)
SQUARE_YUV = (182, 52, 157)  # SQUARE_BGR through cv2's BGR→I420 (BT.601, limited range)
CLOCKS = ("fast", "real")
PIXEL_FORMATS = ("bgr24", "yuv420p")


class FrameNumberError(ValueError):
    """The number strip of an image cannot be read (damaged, absent, or check mismatch)."""


def block_size(width: int) -> int:
    """Side of one strip block in px: a multiple of 16, so blocks sit on macroblocks."""
    return max(16, (width // 40) // 16 * 16)


def strip_region(width: int, height: int) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of the number strip; the overlay must stay out of it."""
    b = block_size(width)
    return 0, 0, STRIP_COLUMNS * b, STRIP_ROWS * b


def _check(number: int) -> int:
    """8-bit check of a 24-bit number: the XOR of its bytes, rotated, plus a constant.

    The constant makes an all-black (or all-white) strip fail the check, so a
    frame without a strip is never read as frame 0.
    """
    a, b, c = (number >> 16) & 0xFF, (number >> 8) & 0xFF, number & 0xFF
    return (a ^ ((b << 1 | b >> 7) & 0xFF) ^ ((c << 2 | c >> 6) & 0xFF) ^ 0xA5) & 0xFF


def _bits(number: int) -> np.ndarray:
    word = (number << CHECK_BITS) | _check(number)
    return np.array([(word >> (STRIP_BITS - 1 - i)) & 1 for i in range(STRIP_BITS)], dtype=bool)


def read_frame_number(image: np.ndarray) -> int:
    """The frame number drawn by :class:`SimCamera` into ``image``.

    ``image`` may be BGR, greyscale, or an I420 array (the strip lies in the
    top rows of its Y plane, so it reads the same as greyscale).

    Samples the centre of each block, so ringing at block edges after lossy
    coding does not matter. Raises :class:`FrameNumberError` if the check fails.
    """
    if image.ndim not in (2, 3) or image.shape[0] < 1:
        raise FrameNumberError(f"not an image: shape {image.shape}")
    height, width = image.shape[:2]
    x0, y0, x1, y1 = strip_region(width, height)
    if x1 > width or y1 > height:
        raise FrameNumberError(f"image {width}x{height} is too small to hold a number strip")
    b = block_size(width)
    strip = image[y0:y1, x0:x1].astype(np.float32)
    if strip.ndim == 3:
        strip = strip.mean(axis=2)
    q = b // 4
    cells = strip.reshape(STRIP_ROWS, b, STRIP_COLUMNS, b)[:, q : b - q, :, q : b - q]
    levels = cells.mean(axis=(1, 3)).reshape(-1)
    bits = levels > 127.5
    word = 0
    for bit in bits:
        word = (word << 1) | int(bit)
    number, check = word >> CHECK_BITS, word & ((1 << CHECK_BITS) - 1)
    if _check(number) != check:
        raise FrameNumberError(f"number strip check failed (read {number}, check {check:#04x})")
    return number


class SimCamera:
    """Synthetic camera: iterate for ``(frame_number, image, timestamp_us)``.

    >>> camera = SimCamera(320, 240)
    >>> number, image, timestamp_us = next(iter(camera))

    The scene is a pure function of the frame number (see :meth:`render`), so
    runs are reproducible. Every image handed out is a fresh array the caller
    may draw on (the overlay does) without disturbing later frames.
    """

    def __init__(
        self,
        width: int = 1280,
        height: int = 720,
        fps: int = 30,
        clock: str = "fast",
        start_number: int = 0,
        pixel_format: str = "bgr24",
    ) -> None:
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, not {clock!r}")
        if pixel_format not in PIXEL_FORMATS:
            raise ValueError(f"pixel_format must be one of {', '.join(PIXEL_FORMATS)}, not {pixel_format!r}")
        if width % 4 or height % 4 or width < 16 or height < 16:
            raise ValueError(f"size must be a multiple of 4 and at least 16x16, not {width}x{height}")
        if not 0 < fps <= 240:
            raise ValueError(f"fps must be in 1..240, not {fps}")
        x0, y0, x1, y1 = strip_region(width, height)
        if x1 > width or 2 * y1 > height:
            raise ValueError(f"{width}x{height} is too small for the number strip ({x1}x{y1} px)")
        if not 0 <= start_number <= MAX_FRAME_NUMBER:
            raise ValueError(f"start_number must be in 0..{MAX_FRAME_NUMBER}")
        self.width, self.height, self.fps, self.clock = width, height, fps, clock
        self.start_number = start_number
        self.pixel_format = pixel_format
        self._block = block_size(width)
        background = self._make_background()
        if pixel_format == "yuv420p":
            self._planes = self._to_planes(background)
        else:
            self._background = background

    def _make_background(self) -> np.ndarray:
        """A horizontally periodic colour pattern twice the frame wide, plus fixed noise.

        Sliding a window across it gives smooth motion at the cost of one copy per frame.
        """
        w, h = self.width, self.height
        x = np.arange(2 * w, dtype=np.float32)[None, :]
        y = np.arange(h, dtype=np.float32)[:, None]
        phase = 2 * np.pi * x / w
        rows = 2 * np.pi * y / h
        noise = np.random.default_rng(20261124).integers(-12, 13, size=(h, w), dtype=np.int16)
        noise = np.concatenate([noise, noise], axis=1)  # keep the pattern exactly periodic
        image = np.empty((h, 2 * w, 3), np.uint8)
        # One float channel at a time: at 1080p a float32 BGR stack would be a ~150 MB spike.
        for c, wave in enumerate((lambda: np.sin(phase + rows),
                                  lambda: np.sin(2 * phase - rows + 1.0),
                                  lambda: np.cos(phase + 2 * rows))):
            channel = 128 + 90 * wave()
            channel += noise
            np.clip(channel, 0, 255, out=channel)
            image[:, :, c] = channel
        return image

    @staticmethod
    def _to_planes(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Full-width Y and half-width U, V planes of the double-wide background."""
        import cv2

        h, w2 = bgr.shape[:2]
        i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)  # (h * 3 / 2, w2)
        y = i420[:h]
        u = i420[h : h + h // 4].reshape(h // 2, w2 // 2)
        v = i420[h + h // 4 :].reshape(h // 2, w2 // 2)
        return y.copy(), u.copy(), v.copy()

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of every image this camera yields."""
        if self.pixel_format == "yuv420p":
            return (self.height * 3 // 2, self.width)
        return (self.height, self.width, 3)

    def timestamp_us(self, number: int) -> int:
        """Sensor timestamp of frame ``number`` in µs."""
        return round(number * 1_000_000 / self.fps)

    def render(self, number: int) -> np.ndarray:
        """The image of frame ``number``, a new array in this camera's pixel format."""
        w, h = self.width, self.height
        offset = (number * 4) % w
        left, top, side = self._square(number)
        if self.pixel_format == "yuv420p":
            return self._render_i420(number, offset, left, top, side)
        image = self._background[:, offset : offset + w].copy()
        image[top : top + side, left : left + side] = SQUARE_BGR
        self._draw_number(image, number)
        return image

    def _render_i420(self, number: int, offset: int, left: int, top: int, side: int) -> np.ndarray:
        w, h = self.width, self.height
        y_plane, u_plane, v_plane = self._planes
        image = np.empty(self.shape, np.uint8)
        y = image[:h]
        u = image[h : h + h // 4].reshape(h // 2, w // 2)
        v = image[h + h // 4 :].reshape(h // 2, w // 2)
        y[:] = y_plane[:, offset : offset + w]
        u[:] = u_plane[:, offset // 2 : offset // 2 + w // 2]
        v[:] = v_plane[:, offset // 2 : offset // 2 + w // 2]
        sq_y, sq_u, sq_v = SQUARE_YUV
        y[top : top + side, left : left + side] = sq_y
        u[top // 2 : (top + side) // 2, left // 2 : (left + side) // 2] = sq_u
        v[top // 2 : (top + side) // 2, left // 2 : (left + side) // 2] = sq_v
        self._draw_number(y, number)
        x0, y0, x1, y1 = strip_region(w, h)
        u[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] = 128
        v[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] = 128
        return image

    def _square(self, number: int) -> tuple[int, int, int]:
        """Left, top and side of a square bouncing across the lower part of the frame (even values)."""
        w, h = self.width, self.height
        side = h // 5 // 2 * 2
        span_x, span_y = w - side, h // 2 - side
        t = number * 8
        px = t % (2 * span_x)
        px = px if px < span_x else 2 * span_x - px
        py = (t // 4 * 2) % (2 * span_y) if span_y > 0 else 0
        py = py if py < span_y else 2 * span_y - py
        return px // 2 * 2, (h // 3 + py) // 2 * 2, side

    def _draw_number(self, image: np.ndarray, number: int) -> None:
        b = self._block
        cells = _bits(number).reshape(STRIP_ROWS, STRIP_COLUMNS).astype(np.uint8) * 255
        strip = np.repeat(np.repeat(cells, b, axis=0), b, axis=1)
        region = image[: STRIP_ROWS * b, : STRIP_COLUMNS * b]
        region[...] = strip[:, :, None] if region.ndim == 3 else strip

    def frames(self, count: int | None = None) -> Iterator[tuple[int, np.ndarray, int]]:
        """Yield ``count`` frames (forever if None) from ``start_number`` on."""
        started = time.monotonic()
        first = self.start_number
        number = first
        while count is None or number - first < count:
            if number > MAX_FRAME_NUMBER:
                raise FrameNumberError(f"frame number {number} does not fit the {NUMBER_BITS}-bit strip")
            timestamp = self.timestamp_us(number)
            if self.clock == "real":
                delay = started + (timestamp - self.timestamp_us(first)) / 1e6 - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            yield number, self.render(number), timestamp
            number += 1

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, int]]:
        return self.frames()

    def __repr__(self) -> str:
        return f"SimCamera({self.width}x{self.height}@{self.fps}, {self.pixel_format}, clock={self.clock!r})"
