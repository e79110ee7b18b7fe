"""Selective-repeat ARQ for the dock link: the sender's and the receiver's state, no I/O.

``link.transport.Link`` owns the threads and the port and calls these under its lock; kept
apart so the retransmission rules (docs/PROTOCOL.md §3) read on their own.
"""

from __future__ import annotations

import collections
import math
import struct

from link.protocol import FRAME_OVERHEAD, FrameType, encode_frame

ACK = struct.Struct(">I")    # receive window edge; then the selective bits for seq+1 .. seq+256
SACK_BITS = 256
MAX_MESSAGE = 1 << 20        # a message is cut into as many DATA frames as it takes
MIN_FRAME = 128
# Per-frame cost in byte-equivalents for choosing the frame size: wire overhead plus the
# CPU a frame costs at both ends (roughly 500 bytes' worth at pty speeds).
COST_BYTES = FRAME_OVERHEAD + 512
ADAPT_EVERY = 32             # known outcomes between frame-size decisions ...
GROW_EVERY = 8               # ... or this many while the line has never lost a frame
MIN_RTO, MAX_RTO = 0.1, 2.0
MIN_PROBE = 0.01
ACK_DELAY = 0.004            # an in-order frame is acknowledged within this long ...
ACK_EVERY = 4                # ... or as soon as this many frames have arrived


class ArqError(Exception):
    """The peer broke the rules, or a frame could not be delivered."""


class _Unacked:
    __slots__ = ("frame", "sent_at", "tx_order", "sends", "lost", "epoch")

    def __init__(self, frame: bytes, now: float, tx_order: int, epoch: int) -> None:
        self.frame, self.sent_at, self.tx_order, self.sends, self.lost = frame, now, tx_order, 1, False
        self.epoch = epoch   # which frame-size decision cut it


class Sender:
    """Cuts messages into DATA frames, keeps up to ``window`` in flight and resends the lost."""

    def __init__(self, window: int, stats: collections.Counter, *, rto: float, max_sends: int,
                 frame_size: int, max_frame: int) -> None:
        self.window, self.stats = window, stats
        self.rto, self.max_sends = rto, max_sends     # rto: initial, then from measured round trips
        self.frame_size, self.max_frame = frame_size, max_frame
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.pending: collections.deque[bytes] = collections.deque()   # messages without a seq yet
        self.peer_window_end = window
        self._current: memoryview | None = None                        # the message being cut up
        self._unacked: dict[int, _Unacked] = {}
        self._next_seq = 0
        self._tx_counter = 0
        self._sent_count = self._lost_count = 0
        self._epoch = 0    # bumped at every frame-size decision
        self._clean = True  # no frame lost yet this session: grow faster

    @property
    def idle(self) -> bool:
        """Everything queued has been sent and acknowledged."""
        return not self.pending and self._current is None and not self._unacked

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def on_ack(self, cumulative: int, sack: int, window_end: int, now: float) -> None:
        acked = [seq for seq in self._unacked if seq < cumulative or
                 (seq > cumulative and seq - cumulative - 1 < SACK_BITS and sack >> (seq - cumulative - 1) & 1)]
        newest: _Unacked | None = None
        for seq in acked:
            entry = self._unacked.pop(seq)
            if newest is None or entry.tx_order > newest.tx_order:
                newest = entry
            if entry.sends > 1:
                self._clean = False
            if entry.epoch == self._epoch:       # judge the size by frames cut at that size only
                self._sent_count += entry.sends  # known outcomes: sends - 1 of them were lost
                self._lost_count += entry.sends - 1
        if newest is not None:
            if newest.sends == 1:  # Karn: a retransmitted frame's round trip is ambiguous
                self._sample_rtt(now - newest.sent_at)
            for entry in self._unacked.values():  # the line is FIFO: anything sent before it is lost
                if entry.tx_order < newest.tx_order:
                    entry.lost = True
        if self._sent_count >= (GROW_EVERY if self._clean else ADAPT_EVERY):
            self._adapt()
        self.peer_window_end = max(self.peer_window_end, window_end)

    def _sample_rtt(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.rto = min(MAX_RTO, max(MIN_RTO, self.srtt + 4 * self.rttvar))

    def _adapt(self) -> None:
        """Pick the frame size that maximises goodput for the loss rate just seen.

        With a bit error rate b a frame of L payload bytes arrives with probability
        exp(-8b(L+H)); goodput L/(L+H)·exp(-8b(L+H)) peaks at L² + HL = H/(8b).
        """
        loss = self._lost_count / self._sent_count
        size = self.frame_size
        if loss == 0:
            size *= 2
        elif loss >= 0.9:
            size //= 4
        else:
            ber = -math.log(1.0 - loss) / (8 * (size + COST_BYTES))
            size = int((-COST_BYTES + math.sqrt(COST_BYTES * COST_BYTES + COST_BYTES / (2 * ber))) / 2)
        self.frame_size = max(MIN_FRAME, min(self.max_frame, size))
        self.stats["frame_size"] = self.frame_size
        self._sent_count = self._lost_count = 0
        self._epoch += 1

    def frames(self, now: float, key: bytes, budget: int) -> list[bytes]:
        """Resends first, then new frames, up to about ``budget`` bytes."""
        out: list[bytes] = []
        size = 0
        base = min(self._unacked, default=self._next_seq)
        blocked = (not (self.pending or self._current is not None) or self._next_seq >= base + self.window
                   or self._next_seq >= self.peer_window_end)
        # nothing new can go out: rather than idle the line, resend what is overdue by a round trip
        probe = max(MIN_PROBE, 1.5 * (self.srtt or self.rto)) if blocked else math.inf
        oldest = True
        for seq, entry in self._unacked.items():   # in sequence order
            if size >= budget:
                break
            # a timeout only for the oldest frame: later losses show up as soon as it is acked
            timed_out = oldest and now - entry.sent_at >= self.rto * min(8, 1 << min(entry.sends - 1, 3))
            oldest = False
            if entry.lost or timed_out or now - entry.sent_at >= probe:
                if entry.sends >= self.max_sends:
                    raise ArqError(f"frame {seq} unacknowledged after {entry.sends} sends")
                self._tx_counter += 1
                entry.tx_order, entry.sent_at, entry.lost = self._tx_counter, now, False
                entry.sends += 1
                self.stats["retransmits"] += 1
                out.append(entry.frame)
                size += len(entry.frame)
        while ((self.pending or self._current is not None) and size < budget
               and self._next_seq < base + self.window and self._next_seq < self.peer_window_end):
            if self._current is None:
                self._current = memoryview(self.pending.popleft())
            piece, rest = self._current[:self.frame_size], self._current[self.frame_size:]
            self._current = rest if len(rest) else None
            self._tx_counter += 1
            entry = _Unacked(encode_frame(FrameType.DATA, self._next_seq, bytes(piece), key, more=bool(len(rest))),
                             now, self._tx_counter, self._epoch)
            self._unacked[self._next_seq] = entry
            self._next_seq += 1
            self.stats["frames_sent"] += 1
            self.stats["max_in_flight"] = max(self.stats["max_in_flight"], len(self._unacked))
            out.append(entry.frame)
            size += len(entry.frame)
        return out


class Receiver:
    """Buffers out-of-order frames, reassembles messages, and says what to acknowledge."""

    def __init__(self, window: int, stats: collections.Counter) -> None:
        self.window, self.stats = window, stats
        self.delivered: collections.deque[bytes] = collections.deque()
        self._next = 0
        self._buffer: dict[int, tuple[bytes, bool]] = {}
        self._partial: list[bytes] = []
        self._partial_size = 0
        self.ack_due = False                        # acknowledge now (gap, duplicate, window)
        self.ack_pending_since: float | None = None  # in-order frames not yet acknowledged
        self._since_ack = 0

    @property
    def window_end(self) -> int:
        return self._next + self.window - len(self.delivered)

    def on_data(self, seq: int, payload: bytes, more: bool, now: float) -> None:
        # ACKs are delayed a little and coalesced (fewer frames back up the line), but a gap
        # or a duplicate is reported at once so the sender can resend without waiting
        self._since_ack += 1
        if seq != self._next or self._buffer or self._since_ack >= ACK_EVERY:
            self.ack_due = True
        elif self.ack_pending_since is None:
            self.ack_pending_since = now
        if seq < self._next or seq in self._buffer:
            self.stats["duplicates"] += 1
            return
        if seq >= self.window_end:
            self.stats["beyond_window"] += 1
            return
        self._buffer[seq] = (payload, more)
        while self._next in self._buffer:
            fragment, more = self._buffer.pop(self._next)
            self._next += 1
            self._partial.append(fragment)
            self._partial_size += len(fragment)
            if self._partial_size > MAX_MESSAGE:
                raise ArqError("the peer sent a message larger than the protocol allows")
            if not more:
                self.delivered.append(b"".join(self._partial))
                self._partial, self._partial_size = [], 0

    def take(self) -> bytes:
        message = self.delivered.popleft()
        if len(self.delivered) == self.window // 2:
            self.ack_due = True  # the window reopened: tell the sender
        return message

    def ack_wanted(self, now: float) -> bool:
        return self.ack_due or (self.ack_pending_since is not None and now - self.ack_pending_since >= ACK_DELAY)

    def ack_frame(self, key: bytes) -> bytes:
        sack = 0
        for seq in self._buffer:
            offset = seq - self._next - 1
            if 0 <= offset < SACK_BITS:
                sack |= 1 << offset
        bits = sack.to_bytes((sack.bit_length() + 7) // 8, "little")
        self.ack_due, self.ack_pending_since, self._since_ack = False, None, 0
        return encode_frame(FrameType.ACK, self._next, ACK.pack(self.window_end) + bits, key)
