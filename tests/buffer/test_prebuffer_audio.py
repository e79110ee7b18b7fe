"""PreEventBuffer with sound: the pre-event policy, the handoff, and the byte bound.

Video frames carry their number, audio packets ``b"A"`` + theirs, so tests assert on content.
Audio packets (every 20 ms) arrive interleaved with video (every 40 ms, a keyframe each second),
a little behind it, as they leave a real AAC encoder.
"""

from __future__ import annotations

import struct

import pytest

from buffer import Frame, PreEventBuffer, TimestampError

FRAME_US, AUDIO_US, LAG_US = 40_000, 20_000, 30_000


def stream(seconds: float, gop: int = 25, audio_size: int = 20, video_size: int = 8) -> list[Frame]:
    """Video frame n at n·40 ms; audio packet k (stamped k·20 ms) arrives once video passed it + lag."""
    out: list[Frame] = []
    k = 0
    for n in range(round(seconds * 1_000_000 / FRAME_US)):
        ts = n * FRAME_US
        while k * AUDIO_US + LAG_US <= ts:
            out.append(Frame(b"A" + struct.pack(">I", k).ljust(audio_size - 1, b"~"), False, k * AUDIO_US, True))
            k += 1
        out.append(Frame(struct.pack(">I", n).ljust(video_size, b"."), n % gop == 0, ts))
    return out


def feed(buf: PreEventBuffer, frames: list[Frame]) -> None:
    for f in frames:
        buf.outputframe(f.data, f.keyframe, f.timestamp_us, None, f.audio)


class Sink:
    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False) -> None:
        self.frames.append(Frame(frame, keyframe, timestamp, audio))

    def audio(self) -> list[int]:
        return [f.timestamp_us for f in self.frames if f.audio]

    def video(self) -> list[int]:
        return [f.timestamp_us for f in self.frames if not f.audio]


def test_default_policy_holds_video_only_and_audio_starts_at_the_press() -> None:
    buf = PreEventBuffer(2.0)
    assert buf.hold_audio is False
    frames = stream(5.0)
    feed(buf, frames)
    assert not [f for f in buf.snapshot() if f.audio]  # nothing heard before the press is kept
    press_us = frames[-1].timestamp_us
    sink = Sink()
    buf.open_output(sink)
    feed(buf, stream(7.0)[len(frames):])
    heard = sink.audio()
    assert heard and min(heard) >= press_us  # late packets from before the press are dropped too
    assert heard == list(range(heard[0], heard[-1] + 1, AUDIO_US))  # and from there on, none is lost
    assert heard[0] - press_us < AUDIO_US
    assert sink.video()[0] == 2_000_000  # the pre-event video is handed over from its keyframe


def test_pre_event_policy_hands_over_held_audio_with_its_gops_without_a_gap() -> None:
    buf = PreEventBuffer(2.0, hold_audio=True)
    frames = stream(5.0)
    feed(buf, frames)
    held = buf.snapshot()
    assert held[0].keyframe and not held[0].audio
    sink = Sink()
    buf.open_output(sink)
    feed(buf, stream(7.0)[len(frames):])
    assert sink.frames[:len(held)] == held
    heard = sink.audio()
    # From the first packet that arrived after the held keyframe, every packet, through the press.
    assert heard == list(range(heard[0], heard[-1] + 1, AUDIO_US))
    assert heard[0] <= 2_000_000 - LAG_US + AUDIO_US and heard[-1] >= 6_900_000 - LAG_US
    assert sink.video() == list(range(2_000_000, 7_000_000, FRAME_US))


def test_audio_counts_against_max_bytes_and_sheds_whole_gops() -> None:
    frames = stream(10.0, audio_size=400, video_size=100)
    one_second = sum(len(f.data) for f in frames if 1_000_000 <= f.timestamp_us < 2_000_000 or
                     (f.audio and 1_000_000 - LAG_US <= f.timestamp_us < 2_000_000 - LAG_US))
    buf = PreEventBuffer(5.0, max_bytes=3 * one_second, hold_audio=True)
    feed(buf, frames)
    assert buf.held_bytes <= 3 * one_second
    assert buf.held_bytes == sum(len(f.data) for f in buf.snapshot())
    held = buf.snapshot()
    assert held[0].keyframe and buf.held_seconds < 3.0  # audio made it shed whole GOPs, below 5 s
    assert sum(len(f.data) for f in held if f.audio) > sum(len(f.data) for f in held if not f.audio)


def test_audio_before_the_first_keyframe_is_dropped_and_audio_time_is_checked_on_its_own() -> None:
    buf = PreEventBuffer(1.0, hold_audio=True)
    buf.outputframe(b"A-early", False, 0, None, True)
    assert buf.held_frames == 0
    buf.outputframe(b"key", True, 100_000)
    buf.outputframe(b"A1", False, 80_000, None, True)  # behind the video: fine, its own clock
    with pytest.raises(TimestampError, match="audio"):
        buf.outputframe(b"A0", False, 80_000, None, True)  # not later than the previous packet
    with pytest.raises(TimestampError):
        buf.outputframe(b"A?", False, None, None, True)
    assert [f.data for f in buf.snapshot()] == [b"key", b"A1"]


def test_audio_heard_ahead_of_the_newest_frame_is_handed_over_at_the_press() -> None:
    """A capture loop encodes a frame's sound before the frame: at the press, packets heard
    after the newest frame have already arrived. They belong to the recording."""
    buf = PreEventBuffer(1.0)
    for n in range(30):  # video every 40 ms; the sound up to each frame arrives just before it
        ts = n * FRAME_US
        for heard_at in (ts - 40_000, ts - 20_000):
            if heard_at >= 0:
                buf.outputframe(b"A%d" % heard_at, False, heard_at, None, True)
        buf.outputframe(struct.pack(">I", n), n % 25 == 0, ts)
    buf.outputframe(b"A-ahead-1", False, 29 * FRAME_US, None, True)  # heard after frame 29, before frame 30
    buf.outputframe(b"A-ahead-2", False, 29 * FRAME_US + AUDIO_US, None, True)
    sink = Sink()
    buf.open_output(sink)  # the press: the newest frame is 29
    buf.outputframe(b"A-live", False, 29 * FRAME_US + 2 * AUDIO_US, None, True)
    heard = [(f.data, f.timestamp_us) for f in sink.frames if f.audio]
    assert heard == [(b"A-ahead-1", 1_160_000), (b"A-ahead-2", 1_180_000), (b"A-live", 1_200_000)]
