"""Encoder throughput: can this machine capture, overlay and encode in real time?

For 720p and 1080p at 10 Mbit/s (libx264 ``ultrafast``, ``zerolatency``, the
settings of :class:`recorder.encoders.PyAVEncoder`), with BGR input and with
I420 input, it measures frames per second of: the sim camera alone; the
encoder alone on pre-rendered frames; and the whole capture loop (camera →
overlay → encoder), plus the bitrate produced.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import time

from hw_sim.camera import SimCamera
from recorder.encoders import PyAVEncoder
from recorder.overlay import burn_overlay

SIZES = [(1280, 720), (1920, 1080)]
FORMATS = ["bgr24", "yuv420p"]
FPS = 30
BITRATE = 10_000_000
SECONDS = 2.5
WHEN = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


class CountingOutput:
    """Counts bytes, like a sink that costs nothing."""

    def __init__(self) -> None:
        self.bytes = 0
        self.frames = 0

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False) -> None:
        self.bytes += len(frame)
        self.frames += 1


def _rate(step, seconds: float = SECONDS) -> tuple[float, int]:
    """Call ``step()`` until ``seconds`` have passed; frames per second and frames done."""
    count = 0
    start = time.perf_counter()
    while True:
        step()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and count >= 10:
            return count / elapsed, count


def _measure(width: int, height: int, pixel_format: str) -> dict[str, float]:
    camera = SimCamera(width, height, FPS, pixel_format=pixel_format)
    numbers = itertools.count()
    camera_fps, _ = _rate(lambda: camera.render(next(numbers)))

    pool = [camera.render(n) for n in range(FPS)]  # one GOP of distinct frames, reused
    output = CountingOutput()
    encoder = PyAVEncoder(output, width, height, FPS, BITRATE, input_format=pixel_format)
    ticks = itertools.count()

    def encode_one() -> None:
        n = next(ticks)
        encoder.encode(pool[n % len(pool)], camera.timestamp_us(n))

    encode_fps, _ = _rate(encode_one)
    encoder.close()
    bitrate = output.bytes * 8 * FPS / max(1, output.frames)

    frames = camera.frames()
    encoder = PyAVEncoder(CountingOutput(), width, height, FPS, BITRATE, input_format=pixel_format)

    def capture_one() -> None:  # the body of recorder.encoders.run_camera
        _, image, timestamp = next(frames)
        burn_overlay(image, "BWC-0042", WHEN, pixel_format)
        encoder.encode(image, timestamp)

    pipeline_fps, _ = _rate(capture_one)
    encoder.close()
    return {"camera": camera_fps, "encode": encode_fps, "pipeline": pipeline_fps, "bitrate": bitrate}


def run() -> str:
    rows = [
        "| size | input | sim camera alone (frames/s) | encode alone (frames/s) "
        "| camera + overlay + encode (frames/s) | real time at 30 fps? | bitrate produced (Mbit/s) |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for (width, height), pixel_format in itertools.product(SIZES, FORMATS):
        m = _measure(width, height, pixel_format)
        ok = "yes" if m["pipeline"] >= FPS else f"no ({m['pipeline'] / FPS:.0%})"
        rows.append(
            f"| {width}×{height} | {pixel_format} | {m['camera']:.0f} | {m['encode']:.0f} | {m['pipeline']:.0f} "
            f"| {ok} | {m['bitrate'] / 1e6:.1f} |"
        )
    notes = (
        f"\nlibx264 via PyAV, preset ultrafast, tune zerolatency, GOP {FPS}, no B-frames, "
        f"{BITRATE // 1_000_000} Mbit/s target with a 1 s VBV; bgr24 input is converted to yuv420p by swscale "
        "(the cost the yuv420p rows avoid, and why the Pi backend asks picamera2 for YUV420); "
        f"{SECONDS:g} s per figure on {os.cpu_count()} CPUs shared with other jobs, so figures are a floor. "
        "The encoder runs its own slice threads; the sim camera costs one frame copy plus the strip."
    )
    return "\n".join(rows) + "\n" + notes
