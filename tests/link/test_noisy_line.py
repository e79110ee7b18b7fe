"""The dock link on a noisy cable (BER 1e-4): it converges, re-cuts what it resends, repairs
single bit errors, gives up on time rather than a send count, and says CLOSE when it fails.

Real pty pairs through hw_sim.link; the pulls of real footage are in tests/dock/test_pull.py.
"""

from __future__ import annotations

import collections
import os
import threading

import pytest

from hw_sim.link import Faults, LinkedPtys
from link.arq import MIN_FRAME, ArqError, Receiver, Sender
from link.protocol import FLAG_MORE, FrameDecoder, FrameType, HEADER_SIZE, encode_frame
from link.transport import Link, LinkClosed, LinkError, open_port

KEY = b"k" * 32
BOTH_MODELS = pytest.mark.parametrize("spread", [False, True], ids=["independent", "spread-over-every-read"])


def _sender(**kw) -> Sender:
    sender = Sender(128, collections.Counter(), rto=0.2, give_up=kw.pop("give_up", 1e9), frame_size=kw.pop("frame_size", 1024),
                    max_frame=65536)
    sender.recut = sender.peer_repairs = True
    return sender


@BOTH_MODELS
def test_link_delivers_every_message_at_ber_1e4(spread):
    messages = [os.urandom(60_000) for _ in range(40)]
    with LinkedPtys(Faults(bit_error_rate=1e-4, spread=spread, seed=5)) as cable:
        a, b = Link(open_port(cable.a_path)), Link(open_port(cable.b_path))
        k1, k2 = os.urandom(32), os.urandom(32)
        a.establish(k1, k2, features=("part", "repair1"))
        b.establish(k2, k1, features=("part", "repair1"))
        received: list[bytes] = []
        reader = threading.Thread(target=lambda: received.extend(b.recv(timeout=60) for _ in messages))
        reader.start()
        for m in messages:
            a.send(m)
        reader.join()
        assert received == messages
        assert a.sender.frame_size < 65536                  # the size came down from the clean-line start
        assert b.decoder.repaired > 0
        a.close()
        b.close()


def test_a_resend_is_recut_to_the_current_frame_size():
    """A frame cut at 64 KiB is resent as PART frames no larger than the size in force now."""
    sender = _sender(frame_size=65536)
    payload = os.urandom(65536)
    sender.pending.append(payload)
    (first,) = sender.frames(0.0, KEY, 1 << 20)
    assert len(first) > 65536
    sender.frame_size = 1000                                 # the estimate came down meanwhile
    resent = sender.frames(10.0, KEY, 1 << 20)               # the oldest frame timed out
    assert len(resent) >= 66 and all(len(w) <= 1000 + HEADER_SIZE + 16 + 4 for w in resent)
    frames = FrameDecoder().feed(b"".join(resent))
    assert {f.type for f in frames} == {FrameType.PART} and {f.seq for f in frames} == {0}
    receiver = Receiver(128, collections.Counter())
    for frame in reversed(frames):                           # any order, one missing until the end
        receiver.on_part(frame.seq, frame.payload, bool(frame.flags & FLAG_MORE), 10.0)
    assert list(receiver.delivered) == [payload]


def test_a_frame_that_keeps_failing_is_cut_in_halves_whatever_the_estimate():
    sender = _sender(frame_size=4096)
    sender.pending.append(os.urandom(4096))
    sender.frames(0.0, KEY, 1 << 20)
    sizes, now = [], 0.0
    for _ in range(40):                                      # never acknowledged; the estimate is not told
        now += 5.0
        sender.frame_size = 4096
        sizes.append(max(len(w) for w in sender.frames(now, KEY, 1 << 20)))
    assert sizes[-1] < 4096 // 4 and min(sizes) >= MIN_FRAME


def test_one_lost_frame_does_not_swing_the_frame_size():
    """The estimate is smoothed: a single loss after a clean run leaves the size near where it was."""
    sender = _sender()
    now = 0.0

    def clean_round() -> None:
        nonlocal now
        sender.pending.append(os.urandom(65536))
        sender.frames(now, KEY, 1 << 20)
        now += 0.001
        sender.on_ack(sender.next_seq, 0, sender.next_seq + 128, now)

    for _ in range(500):                                     # a clean line: grows to full size
        clean_round()
        if sender.frame_size == 65536:
            break
    assert sender.frame_size == 65536
    first = sender.next_seq
    sender.pending.append(os.urandom(65536 * 3))
    assert len(sender.frames(now, KEY, 1 << 20)) == 3
    sender.on_ack(first, 0b11, first + 128, now + 0.001)     # the two after it arrived: the first was lost
    assert len(sender.frames(now + 0.002, KEY, 1 << 20)) == 1
    sender.on_ack(sender.next_seq, 0, sender.next_seq + 128, now + 0.003)
    for _ in range(40):
        clean_round()
    assert sender.frame_size >= 32768 and sender.stats["retransmits"] == 1


def test_give_up_is_time_without_progress_not_a_count_of_sends():
    sender = _sender(give_up=10.0)
    sender._sample_rtt(0.005)                                # a fast line: resent every 10 ms when idle
    sender.pending.append(b"x" * 500)
    sender.frames(0.0, KEY, 1 << 20)
    sends = 0
    for step in range(1, 200):                               # ~200 sends within 9.9 s: no give-up
        sends += len(sender.frames(step * 0.0495, KEY, 1 << 20))
    assert sends > 150
    sender.on_ack(0, 0, 100, 9.9)                            # no progress: nothing acknowledged
    with pytest.raises(ArqError, match="no frame acknowledged for 10 s"):
        sender.frames(10.5, KEY, 1 << 20)


def test_single_bit_errors_are_repaired_and_checked_by_the_tag():
    key = os.urandom(32)
    payload = os.urandom(3000)
    wire = encode_frame(FrameType.DATA, 7, payload, key)
    for bit in range(HEADER_SIZE * 8, len(wire) * 8, 997):   # payload, tag and trailer CRC
        damaged = bytearray(wire)
        damaged[bit // 8] ^= 1 << (bit % 8)
        decoder = FrameDecoder()
        (frame,) = decoder.feed(bytes(damaged))
        assert frame.payload == payload and frame.tag_ok(key) and decoder.repaired == 1
    two = bytearray(wire)
    two[HEADER_SIZE + 10] ^= 1
    two[HEADER_SIZE + 2000] ^= 4
    assert [f.tag_ok(key) for f in FrameDecoder().feed(bytes(two))] in ([], [False])
    untagged = bytearray(encode_frame(FrameType.HELLO, 0, b"{}" * 100))
    untagged[HEADER_SIZE + 3] ^= 2                           # handshake frames are never "repaired"
    assert FrameDecoder().feed(bytes(untagged)) == []


def test_a_failing_end_sends_close_so_the_peer_ends_at_once():
    """Nothing comes back from b to a (a one-way cable): a gives up and tells b, which ends with
    a's reason instead of waiting out its own (here, one-minute) idle timeout."""
    with LinkedPtys(a_to_b=Faults(), b_to_a=Faults(drop_rate=1.0)) as cable:
        a = Link(open_port(cable.a_path), idle_timeout=1.0)
        b = Link(open_port(cable.b_path), idle_timeout=60.0)
        k1, k2 = os.urandom(32), os.urandom(32)
        a.establish(k1, k2, features=("part", "repair1"))
        b.establish(k2, k1, features=("part", "repair1"))
        a.send(b"a message whose ACK never comes back")
        assert b.recv(timeout=30) == b"a message whose ACK never comes back"
        with pytest.raises(LinkError):
            a.flush(timeout=30)
        with pytest.raises(LinkClosed, match="the peer closed the session: peer silent"):
            b.recv(timeout=30)
        assert isinstance(a.error, LinkError)
        a.close()
        b.close()
