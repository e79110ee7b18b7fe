"""The selective-repeat rules on their own: any pattern of lost frames, in-order delivery."""

from __future__ import annotations

import collections
import os

from hypothesis import given, settings, strategies as st

from link.arq import ACK, Receiver, Sender
from link.protocol import FLAG_MORE, FrameDecoder, FrameType

KEY = b"k" * 32


def _run(messages: list[bytes], lose, rounds: int = 2000) -> tuple[list[bytes], collections.Counter]:
    """Drive a Sender and a Receiver through a FIFO line that loses the frames ``lose`` picks."""
    stats: collections.Counter = collections.Counter()
    sender = Sender(8, stats, rto=0.2, give_up=1e9, frame_size=300, max_frame=4096)
    receiver = Receiver(8, collections.Counter())
    decoder = FrameDecoder()
    sender.pending.extend(messages)
    got: list[bytes] = []
    now = 0.0
    for _ in range(rounds):
        now += 0.05
        for wire in sender.frames(now, KEY, 65536):
            if lose():
                continue
            (frame,) = decoder.feed(wire)
            receiver.on_data(frame.seq, frame.payload, bool(frame.flags & FLAG_MORE), now)
        while receiver.delivered:
            got.append(receiver.take())
        if receiver.ack_wanted(now + 1):
            (ack,) = decoder.feed(receiver.ack_frame(KEY))
            if not lose():
                (window_end,) = ACK.unpack_from(ack.payload)
                sender.on_ack(ack.seq, int.from_bytes(ack.payload[ACK.size:], "little"), window_end, now)
        if sender.idle:
            break
    return got, stats


@given(st.lists(st.binary(max_size=2000), min_size=1, max_size=12), st.lists(st.booleans(), max_size=400))
@settings(max_examples=150)
def test_every_message_arrives_once_in_order_whatever_is_lost(messages, pattern):
    losses = iter(pattern)
    got, stats = _run(messages, lambda: next(losses, False))
    assert got == messages
    if not any(pattern):
        assert stats["retransmits"] == 0


def test_lost_frames_are_resent_and_frames_shrink_on_a_lossy_line():
    rng = iter(os.urandom(100_000))
    messages = [os.urandom(3000) for _ in range(40)]
    got, stats = _run(messages, lambda: next(rng) < 64)   # a quarter of all frames lost
    assert got == messages
    assert stats["retransmits"] > 0 and stats["frame_size"] < 4096


def test_a_clean_line_grows_frames_and_resends_nothing():
    messages = [os.urandom(20_000) for _ in range(20)]
    got, stats = _run(messages, lambda: False)
    assert got == messages and stats["retransmits"] == 0 and stats["frame_size"] == 4096


def test_ack_reports_gaps_selectively():
    receiver = Receiver(16, collections.Counter())
    for seq in (0, 2, 3, 5):
        receiver.on_data(seq, b"x", False, 0.0)
    (ack,) = FrameDecoder().feed(receiver.ack_frame(KEY))
    assert ack.type == FrameType.ACK and ack.seq == 1           # 0 arrived, 1 is missing
    bits = int.from_bytes(ack.payload[ACK.size:], "little")
    assert [i + 2 for i in range(8) if bits >> i & 1] == [2, 3, 5]
