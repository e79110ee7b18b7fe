"""PreEventBuffer: unit tests and the threaded buffer → live handoff.

Every frame's data starts with its sequence number, so tests assert on content.
"""

from __future__ import annotations

import logging
import struct
import threading

import pytest

from buffer import Frame, PreEventBuffer, PreEventBufferError, TimestampError

FRAME_US = 33_333


def payload(number: int, size: int = 8) -> bytes:
    return struct.pack(">I", number).ljust(max(size, 4), b".")


def number_of(data: bytes) -> int:
    return struct.unpack_from(">I", data)[0]


def regular(count: int, gop: int = 30, size: int = 8, first: int = 0) -> list[Frame]:
    """Frames numbered from ``first``, a keyframe every ``gop``, timestamp = number × FRAME_US."""
    return [Frame(payload(n, size), n % gop == 0, n * FRAME_US) for n in range(first, first + count)]


def feed(target, frames) -> None:
    for f in frames:
        target.outputframe(f.data, f.keyframe, f.timestamp_us)


class CollectingSink:
    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False) -> None:
        self.frames.append(Frame(frame, keyframe, timestamp))

    @property
    def numbers(self) -> list[int]:
        return [number_of(f.data) for f in self.frames]


def numbers(frames) -> list[int]:
    return [number_of(f.data) for f in frames]


# -- construction ------------------------------------------------------------------------

@pytest.mark.parametrize("duration", [-0.001, 120.001, float("nan"), "30", None, True])
def test_rejects_bad_duration(duration):
    with pytest.raises(PreEventBufferError, match="duration_s"):
        PreEventBuffer(duration)


@pytest.mark.parametrize("max_bytes", [0, -1, 1.5, "1000", None])
def test_rejects_bad_max_bytes(max_bytes):
    with pytest.raises(PreEventBufferError, match="max_bytes"):
        PreEventBuffer(1.0, max_bytes)


@pytest.mark.parametrize("duration", [0, 0.5, 30, 120])
def test_accepts_durations_from_0_to_120(duration):
    assert PreEventBuffer(duration).duration_s == duration


# -- what it holds -----------------------------------------------------------------------

def test_drops_frames_before_first_keyframe():
    buf = PreEventBuffer(10.0)
    feed(buf, regular(70, gop=30, first=5))  # 5..74, keyframes at 30 and 60
    assert numbers(buf.snapshot()) == list(range(30, 75))
    assert buf.held_frames == 45
    assert buf.held_bytes == 45 * 8
    assert buf.snapshot()[0].keyframe


def test_holds_from_newest_keyframe_at_or_before_newest_minus_duration():
    buf = PreEventBuffer(2.0)
    feed(buf, regular(200))  # newest 199 at 6.633 s; cutoff 4.633 s; keyframes at 0, 30, 60 ... 180
    held = numbers(buf.snapshot())
    assert held == list(range(120, 200))  # keyframe 120 (4.0 s) ≤ cutoff < keyframe 150 (5.0 s)
    assert buf.held_seconds == pytest.approx(79 * FRAME_US / 1e6)
    assert buf.held_seconds >= 2.0


def test_keyframe_exactly_at_cutoff_is_the_start():
    buf = PreEventBuffer(1.0)
    frames = [Frame(payload(n), n % 10 == 0, n * 100_000) for n in range(21)]  # keyframes 0, 10, 20
    feed(buf, frames)
    assert numbers(buf.snapshot()) == list(range(10, 21))  # 1.0 s == 2.0 s − 1.0 s
    assert buf.held_seconds == 1.0


def test_duration_zero_holds_only_the_gop_in_flight_and_passes_through_when_open():
    buf = PreEventBuffer(0)
    feed(buf, regular(75))
    assert numbers(buf.snapshot()) == list(range(60, 75))
    sink = CollectingSink()
    buf.open_output(sink)
    feed(buf, regular(10, first=75))
    assert sink.numbers == list(range(60, 85))
    assert buf.held_frames == 0


@pytest.mark.parametrize("duration", [0.0, 0.5, 0.95, 1.0, 1.05, 2.0])
@pytest.mark.parametrize("keyframes", [range(0, 60, 10), (0, 3, 15, 20, 21, 35, 50)], ids=["gop10", "irregular"])
def test_expiry_after_every_frame_matches_the_rule_exactly(duration, keyframes):
    """After each frame the buffer holds from the newest keyframe at or before newest − duration
    (or from the first keyframe): checked frame by frame, on a grid where expiry times land
    exactly on frames, so an expiry one frame early or late fails here, not only by chance."""
    step_us = 100_000
    buf = PreEventBuffer(duration)
    for n in range(60):
        buf.outputframe(payload(n), n in keyframes, n * step_us)
        cutoff = n * step_us - round(duration * 1_000_000)
        eligible = [k for k in keyframes if k <= n and k * step_us <= cutoff]
        start = eligible[-1] if eligible else min(keyframes)
        assert numbers(buf.snapshot()) == list(range(start, n + 1)), f"after frame {n}"


def test_max_bytes_sheds_whole_oldest_gops_and_warns(caplog):
    buf = PreEventBuffer(30.0, max_bytes=10 * 30 * 100)  # room for 10 GOPs of 30 × 100 bytes
    with caplog.at_level(logging.WARNING, logger="buffer.prebuffer"):
        feed(buf, regular(600, size=100))  # 20 s: fits the duration, not the bytes
    held = numbers(buf.snapshot())
    assert held[0] % 30 == 0 and held == list(range(held[0], 600))
    assert buf.held_bytes <= buf.max_bytes
    assert held[0] == 300  # exactly 10 whole GOPs fit
    assert buf.held_bytes == 30_000
    assert buf.held_seconds == pytest.approx(299 * FRAME_US / 1e6)  # the shortfall shows
    assert sum(len(f.data) for f in buf.snapshot()) == buf.held_bytes
    assert any("max_bytes" in r.getMessage() for r in caplog.records)


def test_a_gop_larger_than_max_bytes_is_dropped_until_the_next_keyframe():
    buf = PreEventBuffer(30.0, max_bytes=1000)
    feed(buf, regular(30, size=50))  # one GOP of 1500 bytes
    assert buf.held_frames == 0 and buf.held_bytes == 0
    feed(buf, regular(10, size=50, first=30))
    assert numbers(buf.snapshot()) == list(range(30, 40))


def test_backwards_timestamp_is_refused_and_changes_nothing():
    buf = PreEventBuffer(5.0)
    feed(buf, regular(40))
    before = buf.snapshot()
    with pytest.raises(TimestampError, match="goes back"):
        buf.outputframe(payload(999), False, 39 * FRAME_US - 1)
    with pytest.raises(TimestampError):
        buf.outputframe(payload(999), True, None)
    assert buf.snapshot() == before
    buf.outputframe(payload(40), False, 39 * FRAME_US)  # equal timestamps are accepted
    assert numbers(buf.snapshot())[-2:] == [39, 40]


def test_audio_is_not_held_by_default():  # sound before a press is policy: tests/buffer/test_prebuffer_audio.py
    buf = PreEventBuffer(1.0)
    buf.outputframe(payload(0), True, 0)
    buf.outputframe(b"aac", False, 10, None, True)
    assert numbers(buf.snapshot()) == [0]


# -- handoff -----------------------------------------------------------------------------

def test_open_output_flushes_held_then_forwards_live_then_resumes_at_next_keyframe():
    buf = PreEventBuffer(1.0)
    feed(buf, regular(100))
    sink = CollectingSink()
    buf.open_output(sink)
    assert buf.is_open and buf.held_frames == 0
    assert sink.numbers == list(range(60, 100))
    feed(buf, regular(20, first=100))
    assert sink.numbers == list(range(60, 120))
    assert [f.timestamp_us for f in sink.frames] == [n * FRAME_US for n in range(60, 120)]
    assert [f.keyframe for f in sink.frames] == [n % 30 == 0 for n in range(60, 120)]

    buf.close_output()
    assert not buf.is_open
    feed(buf, regular(30, first=120))  # 120..149: keyframe 120 starts the new hold
    assert sink.numbers == list(range(60, 120))
    assert numbers(buf.snapshot()) == list(range(120, 150))


def test_after_close_frames_before_next_keyframe_are_not_held():
    buf = PreEventBuffer(5.0)
    feed(buf, regular(40))
    buf.open_output(CollectingSink())
    buf.close_output()
    feed(buf, regular(30, first=40))  # 40..69: keyframe at 60
    assert numbers(buf.snapshot()) == list(range(60, 70))


def test_open_with_nothing_held_forwards_from_the_next_keyframe():
    buf = PreEventBuffer(5.0)
    feed(buf, regular(10, first=20))  # 20..29: no keyframe yet
    sink = CollectingSink()
    buf.open_output(sink)
    feed(buf, regular(10, first=30))
    assert sink.numbers == list(range(30, 40))


def test_open_twice_and_close_twice_are_errors():
    buf = PreEventBuffer(1.0)
    with pytest.raises(PreEventBufferError, match="no sink"):
        buf.close_output()
    buf.open_output(CollectingSink())
    with pytest.raises(PreEventBufferError, match="already open"):
        buf.open_output(CollectingSink())


def test_sink_failing_during_flush_loses_nothing():
    class FailingSink(CollectingSink):
        def outputframe(self, *args, **kwargs):
            if len(self.frames) == 5:
                raise OSError("disk full")
            super().outputframe(*args, **kwargs)

    buf = PreEventBuffer(1.0)
    feed(buf, regular(50))
    held = buf.snapshot()
    with pytest.raises(OSError):
        buf.open_output(FailingSink())
    assert not buf.is_open and buf.snapshot() == held
    sink = CollectingSink()
    buf.open_output(sink)
    assert sink.frames == held


def test_picamera2_encoder_hooks_are_harmless():
    buf = PreEventBuffer(1.0)
    buf.start()
    buf._add_stream("video", "h264", width=1280, height=720)
    feed(buf, regular(10))
    buf.stop()
    assert numbers(buf.snapshot()) == list(range(10))
    assert buf.needs_add_stream is False and buf.needs_pacing is False


# -- threads -----------------------------------------------------------------------------

@pytest.mark.parametrize("duration", [0.0, 0.2, 120.0])
def test_handoff_has_no_gap_or_duplicate_while_encoder_thread_runs(duration):
    """An encoder thread feeds numbered frames non-stop; the control thread opens and closes
    sinks while it runs. Each sink must see one consecutive run starting at a keyframe,
    never a frame an earlier sink saw; with a buffer long enough to keep everything between
    runs, each run starts exactly at the first keyframe after the previous run.

    The encoder may run at most ``LEAD`` frames past the point the control thread is waiting
    for, so each open/close lands somewhere inside a window of frames (a real race with the
    encoder, at a point no scheduler can move outside that window): the 120-s buffer then
    never has to expire a frame between two runs however busy the machine is."""
    gop, lead = 10, 64
    buf = PreEventBuffer(duration)
    progress = threading.Condition()
    produced = [0]  # frames the encoder has fed so far
    allowed = [0]   # the encoder waits before feeding frame number allowed[0]
    stop = threading.Event()
    failures: list[BaseException] = []

    def encoder():
        n = 0
        try:
            while True:
                with progress:
                    while n >= allowed[0] and not stop.is_set():
                        progress.wait()
                    if stop.is_set():
                        return
                buf.outputframe(payload(n), n % gop == 0, n * FRAME_US)
                n += 1
                with progress:
                    produced[0] = n
                    progress.notify_all()
        except BaseException as exc:  # reported to the main thread
            failures.append(exc)
            with progress:
                progress.notify_all()

    def run_until(count):
        """Let the encoder run to ``count`` frames and up to ``lead`` beyond; return at ``count``."""
        with progress:
            allowed[0] = count + lead
            progress.notify_all()
            assert progress.wait_for(lambda: produced[0] >= count or failures, timeout=60), "encoder stalled"

    thread = threading.Thread(target=encoder)
    thread.start()
    sinks: list[CollectingSink] = []
    try:
        for cycle in range(12):
            run_until(produced[0] + 37 + 13 * cycle)
            sink = CollectingSink()
            buf.open_output(sink)
            sinks.append(sink)
            run_until(produced[0] + 41 + 7 * cycle)
            buf.close_output()
    finally:
        with progress:
            stop.set()
            progress.notify_all()
        thread.join()
    assert not failures

    previous_end = -1
    for sink in sinks:
        got = sink.numbers
        assert got, "every sink received frames"
        assert got == list(range(got[0], got[0] + len(got))), "no gap, no duplicate"
        assert sink.frames[0].keyframe and got[0] % gop == 0
        assert [f.timestamp_us for f in sink.frames] == [n * FRAME_US for n in got]
        next_keyframe = (previous_end // gop + 1) * gop
        if duration == 120.0:
            assert got[0] == next_keyframe
        else:
            assert got[0] >= next_keyframe
        previous_end = got[-1]
