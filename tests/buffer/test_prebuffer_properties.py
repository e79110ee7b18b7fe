"""PreEventBuffer invariants under hypothesis-generated streams.

Streams vary GOP lengths, frame sizes (with bitrate spikes), timestamp jitter (including
equal timestamps and long pauses), the duration, max_bytes, and when a sink is opened and
closed. After every frame the held frames are checked against the whole history fed.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buffer import Frame, PreEventBuffer, TimestampError


def payload(number: int, size: int) -> bytes:
    return struct.pack(">I", number).ljust(max(size, 4), b".")


class CollectingSink:
    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False) -> None:
        self.frames.append(Frame(frame, keyframe, timestamp))


@st.composite
def streams(draw, max_gops: int = 25) -> list[Frame]:
    """Frames numbered from 0: a few leading non-keyframes, then GOPs of varied shape."""
    frames: list[Frame] = []
    ts = draw(st.integers(0, 10**6))

    def add(keyframe: bool) -> None:
        nonlocal ts
        spike = draw(st.integers(0, 19)) == 0
        size = draw(st.integers(4, 6000 if spike else 600))
        frames.append(Frame(payload(len(frames), size), keyframe, ts))
        ts += draw(st.sampled_from([33_333, 33_334, 0, 16_000, 50_000, 400_000]))

    for _ in range(draw(st.integers(0, 3))):
        add(False)
    for _ in range(draw(st.integers(1, max_gops))):
        add(True)
        for _ in range(draw(st.integers(0, 14))):
            add(False)
    return frames


def gops_of(frames: list[Frame]) -> list[list[Frame]]:
    """Split at keyframes; frames before the first keyframe are left out."""
    gops: list[list[Frame]] = []
    for f in frames:
        if f.keyframe:
            gops.append([f])
        elif gops:
            gops[-1].append(f)
    return gops


def size(frames) -> int:
    return sum(len(f.data) for f in frames)


def check_invariants(buf: PreEventBuffer, fed: list[Frame]) -> None:
    """Everything the issue promises about what is held, given the frames fed since (re)start."""
    held = buf.snapshot()
    assert buf.held_frames == len(held)
    assert buf.held_bytes == size(held) <= buf.max_bytes
    if not held:
        assert buf.held_seconds == 0.0
        gops = gops_of(fed)
        # Empty only before any keyframe, or when the GOP in flight alone outgrew max_bytes.
        assert not gops or size(gops[-1]) > buf.max_bytes
        return
    # A contiguous run ending at the newest frame, starting at a keyframe.
    assert held == fed[len(fed) - len(held):]
    assert held[0].keyframe
    newest = fed[-1].timestamp_us
    assert buf.held_seconds == (newest - held[0].timestamp_us) / 1e6
    cutoff = newest - round(buf.duration_s * 1e6)
    held_gops = gops_of(held)
    # Never more than needed: the second held GOP starts after the cutoff.
    assert len(held_gops) < 2 or held_gops[1][0].timestamp_us > cutoff
    if held[0].timestamp_us > cutoff:  # short of duration_s: only for a reason
        earlier = gops_of(fed[: len(fed) - len(held)])
        not_enough_fed = not earlier
        no_room = bool(earlier) and size(earlier[-1]) + buf.held_bytes > buf.max_bytes
        assert not_enough_fed or no_room


@given(
    frames=streams(),
    duration=st.sampled_from([0.0, 0.1, 0.5, 1.0, 3.0]),
    max_bytes=st.integers(500, 40_000),
    backwards=st.sets(st.integers(1, 400), max_size=5),
)
def test_held_frames_obey_every_invariant_after_every_frame(frames, duration, max_bytes, backwards):
    """Also tries, at generated positions, a frame stamped before the previous one: it must be
    refused with TimestampError and leave the buffer exactly as it was."""
    buf = PreEventBuffer(duration, max_bytes)
    for i, f in enumerate(frames):
        if i in backwards:
            before = buf.snapshot()
            with pytest.raises(TimestampError):
                buf.outputframe(b"late", True, frames[i - 1].timestamp_us - 1)
            assert buf.snapshot() == before
        buf.outputframe(f.data, f.keyframe, f.timestamp_us)
        check_invariants(buf, frames[: i + 1])


@given(
    frames=streams(),
    duration=st.sampled_from([0.0, 0.2, 1.0, 120.0]),
    max_bytes=st.integers(2_000, 40_000),
    cuts=st.lists(st.integers(0, 400), min_size=1, max_size=6, unique=True),
)
def test_open_close_cycles_hand_over_everything_held_then_every_live_frame(frames, duration, max_bytes, cuts):
    """Alternately open and close sinks at generated positions; each sink gets exactly what was
    held at open plus every later frame up to close (from a keyframe if nothing was held)."""
    cuts = sorted(c for c in cuts if c <= len(frames))
    buf = PreEventBuffer(duration, max_bytes)
    since_restart: list[Frame] = []
    sink: CollectingSink | None = None
    expected: list[Frame] = []
    position = 0
    for cut in cuts + [len(frames)]:
        for f in frames[position:cut]:
            buf.outputframe(f.data, f.keyframe, f.timestamp_us)
            if sink is None:
                since_restart.append(f)
                check_invariants(buf, since_restart)
            elif expected or f.keyframe:
                expected.append(f)
        position = cut
        if cut == len(frames):
            break
        if sink is None:
            sink, expected = CollectingSink(), buf.snapshot()
            buf.open_output(sink)
            assert sink.frames == expected and buf.held_frames == 0
        else:
            buf.close_output()
            assert sink.frames == expected
            sink, since_restart = None, []
    if sink is not None:
        assert sink.frames == expected
