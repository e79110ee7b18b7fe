"""Selective-repeat ARQ for the dock link: the sender's and the receiver's state, no I/O.

``link.transport.Link`` owns the threads and the port and calls these under its lock; kept
apart so the retransmission rules (docs/PROTOCOL.md §3) read on their own.
"""

from __future__ import annotations

import collections
import struct

from link.framesize import MIN_FRAME, LossEstimate, best_frame_size
from link.protocol import FRAME_OVERHEAD, MAX_PAYLOAD, FrameType, encode_frame

ACK = struct.Struct(">I")    # receive window edge; then the selective bits for seq+1 .. seq+256
SACK_BITS = 256
MAX_MESSAGE = 1 << 20        # a message is cut into as many DATA frames as it takes
DECIDE_EVERY = 16           # outcomes between frame-size decisions ...
GROW_EVERY = 8              # ... or this many while the line has never lost a frame
HALVE_AFTER = 4             # a frame lost this often in a row at one size is re-cut in halves
MIN_RTO, MAX_RTO = 0.1, 2.0
MIN_PROBE = 0.01
ACK_DELAY = 0.004            # an in-order frame is acknowledged within this long ...
ACK_EVERY = 4                # ... or as soon as this many frames have arrived
PART = struct.Struct(">II")  # PART payload: offset in the frame's payload, the frame's payload length


class ArqError(Exception):
    """The peer broke the rules, or a frame could not be delivered."""


class _Unacked:
    __slots__ = ("payload", "more", "wire", "piece", "sent_at", "tx_order", "sends", "failed")

    def __init__(self, payload: bytes, more: bool, wire: list[bytes], now: float, tx_order: int) -> None:
        self.payload, self.more, self.wire = payload, more, wire
        self.piece = len(payload)   # the largest piece it goes out in: the whole payload until re-cut
        self.sent_at, self.tx_order, self.sends = now, tx_order, 1
        self.failed = 0             # sends lost in a row at the current piece size


class Sender:
    """Cuts messages into DATA frames, keeps up to ``window`` in flight and resends the lost.

    A resend never goes out much larger than the current frame size: a frame cut before the
    size came down is re-cut into PART frames (if the peer takes them, ``recut``), so a
    frame too long for the line is not sent again and again until the link gives up.
    The link fails when nothing has been acknowledged for ``give_up`` seconds while frames
    wait, however many sends that took.
    """

    def __init__(self, window: int, stats: collections.Counter, *, rto: float, give_up: float,
                 frame_size: int, max_frame: int) -> None:
        self.window, self.stats = window, stats
        self.rto, self.give_up = rto, give_up     # rto: initial, then from measured round trips
        self.frame_size, self.max_frame = frame_size, max_frame
        self.recut = False                         # the peer accepts PART frames
        self.peer_repairs = False                  # the peer repairs frames with one bit error
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.pending: collections.deque[bytes] = collections.deque()   # messages without a seq yet
        self.peer_window_end = window
        self.loss = LossEstimate()
        self._current: memoryview | None = None                        # the message being cut up
        self._unacked: dict[int, _Unacked] = {}                        # by seq, oldest first
        self._in_flight: dict[int, int] = {}   # tx_order -> seq of the last send of each unacked frame
        self._lost: dict[int, None] = {}       # seqs known lost (a later send was acknowledged)
        self._next_seq = 0
        self._tx_counter = 0
        self._since_decision = 0
        self._clean = True          # no frame lost yet this session: grow faster
        self._progress_at = 0.0     # when a frame was last acknowledged (or the line went busy)

    @property
    def idle(self) -> bool:
        """Everything queued has been sent and acknowledged."""
        return not self.pending and self._current is None and not self._unacked

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def on_ack(self, cumulative: int, sack: int, window_end: int, now: float) -> None:
        unacked = self._unacked
        acked = []
        for seq in unacked:                    # oldest first: stop at the cumulative edge
            if seq >= cumulative:
                break
            acked.append(seq)
        while sack:
            low = sack & -sack
            seq = cumulative + low.bit_length()   # bit i stands for cumulative + 1 + i
            if seq in unacked:
                acked.append(seq)
            sack ^= low
        newest: _Unacked | None = None
        for seq in acked:
            entry = unacked.pop(seq)
            self._in_flight.pop(entry.tx_order, None)
            self._lost.pop(seq, None)
            if newest is None or entry.tx_order > newest.tx_order:
                newest = entry
            self._outcome(entry, lost=False)
        if newest is not None:
            self._progress_at = now
            if newest.sends == 1:  # Karn: a retransmitted frame's round trip is ambiguous
                self._sample_rtt(now - newest.sent_at)
            # the line is FIFO: every frame sent before the newest acknowledged one was lost
            for tx_order in list(self._in_flight):
                if tx_order > newest.tx_order:
                    break
                seq = self._in_flight.pop(tx_order)
                self._lost[seq] = None
                self._outcome(unacked[seq], lost=True)
        self.peer_window_end = max(self.peer_window_end, window_end)

    def _outcome(self, entry: _Unacked, lost: bool) -> None:
        """One send's fate, for the size estimate (a re-cut frame counts as one frame of its
        piece size: roughly right, and it keeps the estimate learning while only re-cut
        frames are in flight)."""
        if lost:
            self._clean = False
            entry.failed += 1
        self.loss.add(entry.piece + FRAME_OVERHEAD, lost)
        self._since_decision += 1
        if self._since_decision >= (GROW_EVERY if self._clean else DECIDE_EVERY):
            self._adapt()

    def _sample_rtt(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.rto = min(MAX_RTO, max(MIN_RTO, self.srtt + 4 * self.rttvar))

    def _adapt(self) -> None:
        """Move the frame size towards the best size for the smoothed error rate: down at
        once (a frame too long for the line only wastes it), up by at most a quarter per
        decision once the line has lost a frame (twofold before), so it does not overshoot."""
        size = best_frame_size(self.loss.bit_error_rate(self.peer_repairs), self.peer_repairs, self.max_frame)
        # grow only past sizes the line was seen to carry (short messages say little about long frames)
        seen = self.loss.bits / self.loss.outcomes / 8 if self.loss.outcomes else self.frame_size
        if size > self.frame_size:   # doubling on a line never seen to lose, then a quarter at a time
            growth = 2.0 if self._clean else 1.25
            size = min(size, int(growth * self.frame_size), int(2 * max(MIN_FRAME, seen)))
        self.frame_size = max(MIN_FRAME, min(self.max_frame, size))
        self.stats["frame_size"] = self.frame_size
        self._since_decision = 0

    def _cut(self, seq: int, entry: _Unacked, key: bytes, most: int) -> None:
        """Re-cut a frame into equal PART frames of at most ``most`` bytes."""
        total = len(entry.payload)
        pieces = -(-total // max(MIN_FRAME, most - PART.size))
        step = -(-total // pieces)
        entry.wire = [encode_frame(FrameType.PART, seq, PART.pack(offset, total) + entry.payload[offset:offset + step],
                                   key, more=entry.more) for offset in range(0, total, step)]
        entry.piece, entry.failed = step, 0
        self.stats["recut"] += 1

    def _resend(self, seq: int, entry: _Unacked, now: float, key: bytes, out: list[bytes]) -> int:
        if self.recut and entry.piece > MIN_FRAME:
            if entry.piece > 1.5 * self.frame_size:
                self._cut(seq, entry, key, self.frame_size)
            elif entry.failed >= HALVE_AFTER:   # whatever the estimate says, this size does not pass
                self._cut(seq, entry, key, entry.piece // 2)
        self._in_flight.pop(entry.tx_order, None)
        self._lost.pop(seq, None)
        self._tx_counter += 1
        entry.tx_order, entry.sent_at = self._tx_counter, now
        self._in_flight[self._tx_counter] = seq
        entry.sends += 1
        self.stats["retransmits"] += 1
        out += entry.wire
        return sum(map(len, entry.wire))

    def frames(self, now: float, key: bytes, budget: int) -> list[bytes]:
        """Resends first, then new frames, up to about ``budget`` bytes."""
        out: list[bytes] = []
        size = 0
        unacked = self._unacked
        if not unacked:
            self._progress_at = now   # the clock for giving up starts with the first frame in flight
        elif now - self._progress_at > self.give_up:
            raise ArqError(f"no frame acknowledged for {self.give_up:.0f} s")
        for seq in list(self._lost):
            if size >= budget:
                break
            size += self._resend(seq, unacked[seq], now, key, out)
        base = next(iter(unacked), self._next_seq)
        if unacked and size < budget:
            # a timeout only for the oldest frame: later losses show up as soon as it is acked
            entry = unacked[base]
            if now - entry.sent_at >= self.rto * min(8, 1 << min(entry.sends - 1, 3)):
                self._outcome(entry, lost=True)
                size += self._resend(base, entry, now, key, out)
        blocked = (not (self.pending or self._current is not None) or self._next_seq >= base + self.window
                   or self._next_seq >= self.peer_window_end)
        if blocked and unacked and size < budget:
            # nothing new can go out: rather than idle the line, resend what is overdue by a round trip
            probe = max(MIN_PROBE, 1.5 * (self.srtt or self.rto))
            for seq, entry in unacked.items():
                if size >= budget:
                    break
                if now - entry.sent_at >= probe:
                    size += self._resend(seq, entry, now, key, out)
        while ((self.pending or self._current is not None) and size < budget
               and self._next_seq < base + self.window and self._next_seq < self.peer_window_end):
            if self._current is None:
                self._current = memoryview(self.pending.popleft())
            piece, rest = bytes(self._current[:self.frame_size]), self._current[self.frame_size:]
            self._current = rest if len(rest) else None
            self._tx_counter += 1
            wire = encode_frame(FrameType.DATA, self._next_seq, piece, key, more=bool(len(rest)))
            unacked[self._next_seq] = _Unacked(piece, bool(len(rest)), [wire], now, self._tx_counter)
            self._in_flight[self._tx_counter] = self._next_seq
            self._next_seq += 1
            self.stats["frames_sent"] += 1
            self.stats["max_in_flight"] = max(self.stats["max_in_flight"], len(unacked))
            out.append(wire)
            size += len(wire)
        return out


class _Pieces:
    """The parts of one re-cut frame received so far (cuts of different sizes may overlap)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.data = bytearray(total)
        self.have: list[tuple[int, int]] = []   # received byte ranges, merged

    def add(self, offset: int, data: bytes) -> bool:
        """Keep a part; True once every byte of the frame is here."""
        end = offset + len(data)
        self.data[offset:end] = data
        ranges = sorted(self.have + [(offset, end)])
        merged = [ranges[0]]
        for start, stop in ranges[1:]:
            if start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
            else:
                merged.append((start, stop))
        self.have = merged
        return merged == [(0, self.total)] or self.total == 0


class Receiver:
    """Buffers out-of-order frames, reassembles messages, and says what to acknowledge."""

    def __init__(self, window: int, stats: collections.Counter) -> None:
        self.window, self.stats = window, stats
        self.delivered: collections.deque[bytes] = collections.deque()
        self._next = 0
        self._buffer: dict[int, tuple[bytes, bool]] = {}
        self._partial: list[bytes] = []
        self._partial_size = 0
        self._pieces: dict[int, _Pieces] = {}       # frames resent as PARTs, not yet whole
        self.ack_due = False                        # acknowledge now (gap, duplicate, window)
        self.ack_pending_since: float | None = None  # in-order frames not yet acknowledged
        self._since_ack = 0
        self._highest = -1    # the highest sequence number seen

    @property
    def window_end(self) -> int:
        return self._next + self.window - len(self.delivered)

    def on_data(self, seq: int, payload: bytes, more: bool, now: float) -> None:
        # ACKs are delayed a little and coalesced (fewer frames back up the line), but a gap
        # or a duplicate is reported at once so the sender can resend without waiting
        # A new gap (a frame lost just before this one), a duplicate (our ACK was lost) and
        # a filled gap are reported at once; frames arriving behind a known gap are not,
        # or a lossy line would cost an ACK per frame
        self._since_ack += 1
        new_gap = seq > self._highest + 1
        self._highest = max(self._highest, seq)
        if (new_gap or seq < self._next or seq in self._buffer or (seq == self._next and self._buffer)
                or self._since_ack >= ACK_EVERY):
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
        self._pieces.pop(seq, None)   # a whole copy overtook its parts
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

    def on_part(self, seq: int, payload: bytes, more: bool, now: float) -> None:
        """A piece of frame ``seq`` (PART): the frame counts as received once whole."""
        if len(payload) < PART.size:
            raise ArqError("the peer sent a PART frame without its header")
        offset, total = PART.unpack_from(payload)
        data = payload[PART.size:]
        if total > MAX_PAYLOAD or offset + len(data) > total:
            raise ArqError("the peer sent a PART frame outside its frame")
        if seq < self._next or seq in self._buffer or seq >= self.window_end:
            self.on_data(seq, b"", more, now)   # duplicate or beyond the window: counted, acknowledged
            return
        pieces = self._pieces.setdefault(seq, _Pieces(total))
        if pieces.total != total:
            raise ArqError(f"the peer sent PART frames of different lengths for frame {seq}")
        if pieces.add(offset, data):
            del self._pieces[seq]
            self.on_data(seq, bytes(pieces.data), more, now)
        else:
            self.ack_due = True   # tell the sender the frame is still missing

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
