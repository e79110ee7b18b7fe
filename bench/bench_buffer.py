"""Pre-event buffer: per-frame cost against picamera2's CircularOutput2, and memory held.

picamera2 is imported here only to measure against it. ``pip install --no-deps picamera2``
(done by this benchmark when missing) gives its pure-Python outputs; its package ``__init__``
needs libcamera, so ``picamera2`` and ``picamera2.outputs`` are stood in by bare package
modules pointing at the installed directory, and only ``outputs/output.py`` and
``outputs/circularoutput2.py`` — the real, unmodified code — are executed.
"""

from __future__ import annotations

import gc
import importlib
import importlib.metadata
import importlib.util
import random
import subprocess
import sys
import time
import tracemalloc
import types

from buffer import PreEventBuffer

FPS = 30
FRAME_US = 1_000_000 // FPS
GOP = 30
BITRATE = 10_000_000
DURATION_S = 30.0
TIMED_MINUTES = 10
MEMORY_MINUTES = 10
REPEATS = 7


def frame_sizes(count: int, seed: int = 1) -> list[int]:
    """1080p30 at 10 Mbit/s: keyframes 4× a P-frame, P-frames ±20 %."""
    per_gop = BITRATE / 8 * GOP / FPS
    p_size = per_gop / (GOP - 1 + 4)
    rng = random.Random(seed)
    return [
        int((4 if n % GOP == 0 else 1) * p_size * rng.uniform(0.8, 1.2)) for n in range(count)
    ]


def packet_stream(minutes: int) -> list[tuple[bytes, bool, int]]:
    """The same packets for both outputs; two GOPs of distinct bytes objects, reused."""
    count = minutes * 60 * FPS
    sizes = frame_sizes(2 * GOP)
    pool = [random.Random(n).randbytes(s) for n, s in enumerate(sizes)]
    return [(pool[n % len(pool)], n % GOP == 0, n * FRAME_US) for n in range(count)]


def load_circular_output2() -> tuple[type | None, type | None, str]:
    """CircularOutput2 and picamera2's Output base, imported without libcamera."""
    note = ""
    if importlib.util.find_spec("picamera2") is None:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "picamera2"], check=False
        )
        importlib.invalidate_caches()
        note = "picamera2 installed by this benchmark with `pip install --no-deps`. "
    spec = importlib.util.find_spec("picamera2")
    if spec is None or not spec.submodule_search_locations:
        return None, None, "picamera2 could not be installed (no network?); "
    root = list(spec.submodule_search_locations)[0]
    saved = {k: sys.modules.get(k) for k in ("picamera2", "picamera2.outputs")}
    try:
        for name, path in (("picamera2", root), ("picamera2.outputs", f"{root}/outputs")):
            stub = types.ModuleType(name)
            stub.__path__ = [path]  # a package whose __init__ is not run
            sys.modules[name] = stub
        module = importlib.import_module("picamera2.outputs.circularoutput2")
        base = importlib.import_module("picamera2.outputs.output")
        version = importlib.metadata.version("picamera2")
    except Exception as exc:  # report, don't fail the whole bench run
        return None, None, f"{note}picamera2 import failed: {exc!r}; "
    finally:  # leave no half-imported picamera2 behind for anything else in this process
        for name in [k for k in sys.modules if k == "picamera2" or k.startswith("picamera2.")]:
            del sys.modules[name]
        sys.modules.update({k: m for k, m in saved.items() if m is not None})
    return module.CircularOutput2, base.Output, f"{note}picamera2 {version}. "


class NullSink:
    """Takes frames and does nothing: what is timed is the buffer, not the sink."""

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        pass

    def start(self):
        pass

    def stop(self):
        pass


def time_per_frame(make, stream) -> float:
    """Best of REPEATS runs, µs per outputframe call (loop overhead included)."""
    best = float("inf")
    for _ in range(REPEATS):
        output = make()
        call = output.outputframe
        gc.disable()
        start = time.perf_counter_ns()
        for data, keyframe, ts in stream:
            call(data, keyframe, ts)
        elapsed = time.perf_counter_ns() - start
        gc.enable()
        best = min(best, elapsed / len(stream) / 1000)
    return best


def memory_ratio(minutes: int) -> tuple[int, int, float, float]:
    """Feed fresh bytes objects as an encoder would; tracemalloc peak vs the most bytes held."""
    count = minutes * 60 * FPS
    sizes = frame_sizes(count, seed=2)
    source = random.Random(3).randbytes(max(sizes) * 4)
    offsets = [random.Random(n).randrange(len(source) - s) for n, s in enumerate(sizes[:1000])]
    buf = PreEventBuffer(DURATION_S)
    most_held = 0
    gc.collect()
    tracemalloc.start()
    try:
        for n, size in enumerate(sizes):
            off = offsets[n % len(offsets)]
            buf.outputframe(source[off:off + size], n % GOP == 0, n * FRAME_US)
            most_held = max(most_held, buf.held_bytes)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, most_held, peak / most_held, buf.held_seconds


def run() -> str:
    circular, picamera_output, note = load_circular_output2()
    stream = packet_stream(TIMED_MINUTES)
    rows = []

    def ours_buffering():
        return PreEventBuffer(DURATION_S)

    def ours_recording():
        buf = PreEventBuffer(DURATION_S)
        buf.open_output(NullSink())
        return buf

    timings = {"buffering": [time_per_frame(ours_buffering, stream)],
               "recording": [time_per_frame(ours_recording, stream)]}
    if circular is not None:
        def theirs_buffering():
            out = circular(buffer_duration_ms=int(DURATION_S * 1000))
            out.start()
            return out

        def theirs_recording():
            out = theirs_buffering()
            sink = type("NullOutput", (picamera_output,), {"outputframe": NullSink.outputframe})()
            out.open_output(sink)
            return out

        timings["buffering"].append(time_per_frame(theirs_buffering, stream))
        timings["recording"].append(time_per_frame(theirs_recording, stream))

    for mode, figures in timings.items():
        what = "no sink open (holding 30 s)" if mode == "buffering" else "sink open (recording)"
        ours = figures[0]
        if len(figures) == 2:
            theirs = figures[1]
            rows.append(f"| `outputframe`, {what} | {ours:.2f} µs | {theirs:.2f} µs | {ours / theirs:.2f} |")
        else:
            rows.append(f"| `outputframe`, {what} | {ours:.2f} µs | n/a | n/a |")

    peak, held, ratio, held_s = memory_ratio(MEMORY_MINUTES)
    lines = [
        "| measure | PreEventBuffer | CircularOutput2 | ratio (ours ÷ theirs) |",
        "|---|---:|---:|---:|",
        *rows,
        f"| tracemalloc peak ÷ most bytes held, {MEMORY_MINUTES} min 1080p30 at 10 Mbit/s, "
        f"30 s buffer | {ratio:.3f} ({peak / 2**20:.1f} MiB ÷ {held / 2**20:.1f} MiB) | — | — |",
        "",
        f"{note}Same synthetic packet stream for both ({TIMED_MINUTES} min of 1080p30 at 10 Mbit/s, "
        f"keyframe every {GOP}, keyframes 4× a P-frame), buffer {DURATION_S:g} s, best of {REPEATS} runs, "
        "loop overhead included, GC off while timing. CircularOutput2 is picamera2's real code "
        "(package `__init__` bypassed, libcamera never imported); when recording it still buffers "
        "and emits 30 s late, we pass frames straight through. Memory: fresh bytes per frame as an "
        f"encoder makes them, fed as fast as possible; ended holding {held_s:.2f} s. "
        "Goals: cost ratio ≤ 1, memory ratio ≤ 1.1. 2 CPUs shared with other jobs: figures are a floor.",
    ]
    return "\n".join(lines)
