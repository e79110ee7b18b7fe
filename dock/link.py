"""The reliable, windowed, authenticated stream both ends of the dock link run.

Selective repeat over a lossy serial line (docs/PROTOCOL.md §3): up to ``window`` DATA
frames in flight; the receiver answers with cumulative + selective ACKs and the edge of
its receive window; the sender retransmits a frame when a later one is acknowledged
(the line is FIFO, so that frame was lost) or when it has waited ``rto`` seconds.

One reader thread only reads and decodes (it never blocks on anything but the port, so
neither end can deadlock the other); one writer thread owns every write. The handshake
(dock.session) sends its frames through the same threads before ``establish()``.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import queue
import select
import struct
import threading
import time
from typing import Any

import serial

from dock.protocol import (DEFAULT_PAYLOAD, FLAG_MORE, FRAME_OVERHEAD, MAX_PAYLOAD, FrameDecoder, FrameType,
                           LinkFrame, encode_frame)

log = logging.getLogger(__name__)

_ACK = struct.Struct(">I")  # receive window edge; then the selective bits for seq+1 .. seq+256
_SACK_BITS = 256
_WRITE_BATCH = 65536
MAX_MESSAGE = 1 << 20        # a message is cut into as many DATA frames as it takes
MIN_FRAME = 128
# Per-frame cost in byte-equivalents for choosing the frame size: wire overhead plus the
# CPU a frame costs at both ends (roughly 500 bytes' worth at pty speeds).
_COST_BYTES = FRAME_OVERHEAD + 512
_ADAPT_EVERY = 32            # transmissions between frame-size decisions
MIN_RTO, MAX_RTO = 0.1, 2.0
MIN_PROBE = 0.01
ACK_DELAY = 0.004            # an in-order frame is acknowledged within this long ...
ACK_EVERY = 4               # ... or as soon as this many frames have arrived


class LinkError(Exception):
    """The dock link failed: the port vanished, the peer went silent, or it misbehaved."""


class LinkClosed(LinkError):
    """The peer closed the session or the cable was pulled."""


class LinkTimeout(LinkError):
    """Nothing arrived in time."""


def open_port(url: str, timeout: float = 0.1) -> serial.SerialBase:
    """Open a serial port by path or pyserial URL (``/dev/ttyACM0``, ``loop://`` ...)."""
    try:
        return serial.serial_for_url(url, baudrate=115200, timeout=timeout, write_timeout=None)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise LinkError(f"cannot open {url}: {exc}") from None


class _Unacked:
    __slots__ = ("frame", "sent_at", "tx_order", "sends", "lost")

    def __init__(self, frame: bytes) -> None:
        self.frame = frame
        self.sent_at = 0.0
        self.tx_order = 0
        self.sends = 0
        self.lost = True  # not sent yet: due now


class Link:
    """A session's frame transport over one open serial port (which the Link closes)."""

    def __init__(
        self,
        port: serial.SerialBase,
        *,
        window: int = 128,
        rto: float = 0.25,
        idle_timeout: float = 10.0,
        heartbeat: float = 1.0,
        max_sends: int = 100,
        frame_size: int = 1024,
    ) -> None:
        self.port = port
        self.window = min(window, _SACK_BITS)
        self.rto = rto              # initial; then from measured round trips (RFC 6298)
        self._srtt: float | None = None
        self._rttvar = 0.0
        self.idle_timeout = idle_timeout
        self.heartbeat = heartbeat
        self.max_sends = max_sends
        self.max_frame = DEFAULT_PAYLOAD
        self.frame_size = frame_size   # adapted to the loss rate (see _adapt)
        self._sent_count = 0
        self._lost_count = 0
        self._current: memoryview | None = None   # the message being cut into frames
        self._partial: list[bytes] = []
        self._partial_size = 0
        self.decoder = FrameDecoder(MAX_PAYLOAD)
        self.stats: collections.Counter[str] = collections.Counter()
        self.handshake_frames: queue.Queue[LinkFrame] = queue.Queue(maxsize=64)
        self._lock = threading.RLock()
        self._rx = threading.Condition(self._lock)      # messages delivered (recv waits)
        self._tx = threading.Condition(self._lock)      # work for the writer
        self._space = threading.Condition(self._lock)   # room to send, or all acknowledged
        self._send_key: bytes | None = None
        self._recv_key: bytes | None = None
        self._outbox: collections.deque[bytes] = collections.deque()   # plaintext handshake frames
        self._pending: collections.deque[bytes] = collections.deque()  # messages without a seq yet
        self._unacked: dict[int, _Unacked] = {}
        self._next_seq = 0
        self._tx_counter = 0
        self._peer_window_end = self.window
        self._recv_next = 0
        self._recv_buffer: dict[int, tuple[bytes, bool]] = {}
        self._delivered: collections.deque[bytes] = collections.deque()
        self._ack_due = False                      # acknowledge now (gap, duplicate, window)
        self._ack_pending_since: float | None = None   # in-order frames not yet acknowledged
        self._rx_since_ack = 0
        self._close_due = False
        self._last_heard = time.monotonic()
        self._last_sent = 0.0
        self._error: LinkError | None = None
        self._peer_closed = False
        self._empty_reads = 0
        self._replies: dict[tuple[int, bytes], bytes] = {}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._read_loop, name="dock-link-reader", daemon=True),
            threading.Thread(target=self._write_loop, name="dock-link-writer", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # --- the handshake uses plain frames --------------------------------------------------

    def send_frame(self, ftype: FrameType, payload: bytes = b"", key: bytes | None = None) -> None:
        """Queue one unsequenced frame (handshake, reject, confirmation)."""
        with self._lock:
            self._outbox.append(encode_frame(ftype, 0, payload, key))
            self._tx.notify()

    def next_handshake_frame(self, timeout: float) -> LinkFrame | None:
        """The next handshake-type frame from the peer, or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            self._raise_if_failed(allow_peer_closed=False)
            try:
                return self.handshake_frames.get(timeout=min(0.1, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    return None

    def remember_reply(self, ftype: FrameType, payload: bytes, reply: bytes) -> None:
        """Answer a repeat of this handshake frame with ``reply`` (its first answer was lost)."""
        with self._lock:
            self._replies[(ftype, payload)] = reply

    def establish(self, send_key: bytes, recv_key: bytes, peer_window: int | None = None,
                  max_frame: int = DEFAULT_PAYLOAD) -> None:
        """Start the authenticated stream: from now on every frame is tagged and checked."""
        with self._lock:
            self._send_key, self._recv_key = send_key, recv_key
            self.max_frame = max(MIN_FRAME, min(max_frame, MAX_PAYLOAD))
            self.frame_size = min(self.frame_size, self.max_frame)
            if peer_window is not None:
                self._peer_window_end = max(1, min(self.window, peer_window))
            self._last_heard = time.monotonic()
            self._wake_all()

    @property
    def error(self) -> LinkError | None:
        """Why the link failed, or None while it works."""
        return self._error

    @property
    def established(self) -> bool:
        return self._send_key is not None

    # --- the reliable stream ----------------------------------------------------------------

    def send(self, message: bytes, timeout: float | None = None) -> None:
        """Queue a message; blocks while a window's worth is already waiting."""
        if len(message) > MAX_MESSAGE:
            raise LinkError(f"message of {len(message)} bytes exceeds the {MAX_MESSAGE}-byte maximum")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while len(self._pending) >= self.window:
                self._raise_if_failed()
                if deadline is not None and time.monotonic() >= deadline:
                    raise LinkTimeout("send window stayed full")
                self._space.wait(0.1)
            self._raise_if_failed()
            self._pending.append(message)
            self._tx.notify()

    def recv(self, timeout: float | None = None) -> bytes:
        """The next message in order; LinkClosed once the peer has closed and all is read."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not self._delivered:
                self._raise_if_failed()
                if deadline is not None and time.monotonic() >= deadline:
                    raise LinkTimeout("no message from the peer in time")
                self._rx.wait(0.1)
            message = self._delivered.popleft()
            if len(self._delivered) == self.window // 2:
                self._ack_due = True  # the window reopened: tell the sender
                self._tx.notify()
            return message

    def flush(self, timeout: float) -> bool:
        """Wait until everything sent is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending or self._unacked or self._current is not None:
                self._raise_if_failed()
                if time.monotonic() >= deadline:
                    return False
                self._space.wait(0.05)
        return True

    def close(self, flush_timeout: float = 2.0) -> None:
        """Flush, tell the peer, stop the threads and close the port. Never raises."""
        if self._stop.is_set():
            return
        try:
            if self.established and self._error is None:
                self.flush(flush_timeout)
                with self._lock:
                    self._close_due = True
                    self._tx.notify()
                deadline = time.monotonic() + 0.5
                while self._close_due and time.monotonic() < deadline and self._error is None:
                    time.sleep(0.01)
        except LinkError:
            pass
        self._stop.set()
        with self._lock:
            self._wake_all()
        for thread in self._threads:
            thread.join(timeout=2.0)
        try:
            self.port.close()
        except Exception:  # noqa: BLE001 - a vanished port may fail to close; nothing to lose
            pass

    def __enter__(self) -> "Link":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- internals --------------------------------------------------------------------------

    def _raise_if_failed(self, allow_peer_closed: bool = True) -> None:
        if self._error is not None:
            raise self._error
        if self._peer_closed and allow_peer_closed and not self._delivered:
            raise LinkClosed("the peer closed the session")
        if self._stop.is_set():
            raise LinkClosed("the link is closed")
        if self.established and time.monotonic() - self._last_heard > self.idle_timeout:
            self._fail(LinkTimeout(f"peer silent for {self.idle_timeout:.0f} s"))
            raise self._error  # type: ignore[misc]

    def _wake_all(self) -> None:
        for condition in (self._rx, self._tx, self._space):
            condition.notify_all()

    def _fail(self, error: LinkError) -> None:
        with self._lock:
            if self._error is None:
                self._error = error
                log.info("dock link failed: %s", error)
            self._wake_all()

    def _read_chunk(self) -> bytes:
        fd = self._fd()
        if fd is None:
            return self.port.read(max(1, self.port.in_waiting))
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            return b""
        data = os.read(fd, 65536)
        if data:
            self._empty_reads = 0
            return data
        # ready but empty: a hang-up, or (rarely) another reader of the same tty was faster
        self._empty_reads += 1
        if self._empty_reads >= 3:
            raise LinkClosed("the port hung up (cable pulled?)")
        time.sleep(0.01)
        return b""

    def _write(self, data: bytes) -> None:
        """Write everything; straight to the descriptor when there is one (pyserial's write
        copies the rest of the buffer after every partial write)."""
        fd = self._fd()
        if fd is None:
            self.port.write(data)
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                select.select([], [fd], [], 0.1)
                if self._stop.is_set():
                    return

    def _fd(self) -> int | None:
        fileno = getattr(self.port, "fileno", None)
        if fileno is None:
            return None
        try:
            return fileno()
        except Exception:  # noqa: BLE001 - URL transports without a descriptor
            return None

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._read_chunk()
            except LinkError as exc:
                self._fail(exc)
                return
            except (OSError, serial.SerialException, ValueError, TypeError) as exc:
                if not self._stop.is_set():
                    self._fail(LinkClosed(f"the port failed: {exc}"))
                return
            if data:
                self.stats["bytes_in"] += len(data)
                frames = self.decoder.feed(data)
                if frames:
                    self._on_frames(frames)

    def _on_frames(self, frames: list[LinkFrame]) -> None:
        """Handle one read's worth of frames under one lock, waking only who has work."""
        key = self._recv_key
        authentic = []
        for frame in frames:
            if frame.type < FrameType.DATA:
                self._on_handshake_frame(frame)
            elif key is not None and frame.tag_ok(key):
                authentic.append(frame)
            else:
                self.stats["bad_tags"] += 1
        if not authentic:
            return
        with self._lock:
            self._last_heard = time.monotonic()
            delivered, ack_was_pending, acked = len(self._delivered), self._ack_pending_since, False
            for frame in authentic:
                if frame.type == FrameType.DATA:
                    self._on_data(frame.seq, frame.payload, bool(frame.flags & FLAG_MORE))
                elif frame.type == FrameType.ACK and _ACK.size <= len(frame.payload) <= _ACK.size + _SACK_BITS // 8:
                    (window_end,) = _ACK.unpack_from(frame.payload)
                    self._on_ack(frame.seq, int.from_bytes(frame.payload[_ACK.size:], "little"), window_end)
                    acked = True
                elif frame.type == FrameType.CLOSE:
                    self._peer_closed = True
            if len(self._delivered) != delivered or self._peer_closed:
                self._rx.notify_all()
            if acked:
                self._space.notify_all()
            if acked or self._ack_due or (ack_was_pending is None and self._ack_pending_since is not None):
                self._tx.notify()

    def _on_handshake_frame(self, frame: LinkFrame) -> None:
        reply = self._replies.get((frame.type, frame.payload))
        if reply is not None:  # a repeat: our answer was lost on the way
            with self._lock:
                self._outbox.append(reply)
                self._tx.notify()
        elif self.established and frame.type == FrameType.HELLO:
            self._fail(LinkClosed("the peer started a new session"))
        elif not self.established:
            try:
                self.handshake_frames.put_nowait(frame)
            except queue.Full:
                self.stats["handshake_dropped"] += 1

    def _on_data(self, seq: int, payload: bytes, more: bool) -> None:
        # ACKs are delayed a little and coalesced (fewer frames back up the line), but a gap
        # or a duplicate is reported at once so the sender can resend without waiting
        self._rx_since_ack += 1
        if seq != self._recv_next or self._recv_buffer or self._rx_since_ack >= ACK_EVERY:
            self._ack_due = True
        elif self._ack_pending_since is None:
            self._ack_pending_since = time.monotonic()
        window_end = self._recv_next + self.window - len(self._delivered)
        if seq < self._recv_next or seq >= window_end or seq in self._recv_buffer:
            self.stats["duplicates" if seq < self._recv_next or seq in self._recv_buffer else "beyond_window"] += 1
            return
        self._recv_buffer[seq] = (payload, more)
        while self._recv_next in self._recv_buffer:
            fragment, more = self._recv_buffer.pop(self._recv_next)
            self._recv_next += 1
            self._partial.append(fragment)
            self._partial_size += len(fragment)
            if self._partial_size > MAX_MESSAGE:
                self._fail(LinkError("the peer sent a message larger than the protocol allows"))
                return
            if not more:
                self._delivered.append(b"".join(self._partial))
                self._partial, self._partial_size = [], 0

    def _on_ack(self, cumulative: int, sack: int, window_end: int) -> None:
        acked = [seq for seq in self._unacked if seq < cumulative or
                 (seq > cumulative and seq - cumulative - 1 < _SACK_BITS and sack >> (seq - cumulative - 1) & 1)]
        newest: _Unacked | None = None
        for seq in acked:
            entry = self._unacked.pop(seq)
            if newest is None or entry.tx_order > newest.tx_order:
                newest = entry
            self._sent_count += entry.sends      # known outcomes: sends - 1 of them were lost
            self._lost_count += entry.sends - 1
        if newest is not None:
            if newest.sends == 1:  # Karn: a retransmitted frame's round trip is ambiguous
                self._sample_rtt(time.monotonic() - newest.sent_at)
            for entry in self._unacked.values():  # the line is FIFO: anything sent before it is lost
                if entry.tx_order < newest.tx_order and not entry.lost:
                    entry.lost = True
        self._peer_window_end = max(self._peer_window_end, window_end)

    def _sample_rtt(self, rtt: float) -> None:
        if self._srtt is None:
            self._srtt, self._rttvar = rtt, rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt
        self.rto = min(MAX_RTO, max(MIN_RTO, self._srtt + 4 * self._rttvar))

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
            cost = _COST_BYTES
            ber = -math.log(1.0 - loss) / (8 * (size + cost))
            size = int((-cost + math.sqrt(cost * cost + cost / (2 * ber))) / 2)
        self.frame_size = max(MIN_FRAME, min(self.max_frame, size))
        self.stats["frame_size"] = self.frame_size
        self._sent_count = self._lost_count = 0

    def _ack_frame(self) -> bytes:
        sack = 0
        for seq in self._recv_buffer:
            offset = seq - self._recv_next - 1
            if 0 <= offset < _SACK_BITS:
                sack |= 1 << offset
        window_end = self._recv_next + self.window - len(self._delivered)
        bits = sack.to_bytes((sack.bit_length() + 7) // 8, "little")
        return encode_frame(FrameType.ACK, self._recv_next, _ACK.pack(window_end) + bits, self._send_key)

    def _collect(self, now: float) -> list[bytes]:
        """Frames to write now, in order of urgency (called with the lock held)."""
        out = list(self._outbox)
        self._outbox.clear()
        if not self.established:
            return out
        key = self._send_key
        delayed = self._ack_pending_since is not None and now - self._ack_pending_since >= ACK_DELAY
        if self._ack_due or delayed or now - self._last_sent >= self.heartbeat:
            out.append(self._ack_frame())
            self._ack_due, self._ack_pending_since, self._rx_since_ack = False, None, 0
        size = sum(map(len, out))
        base = min(self._unacked, default=self._next_seq)
        blocked = (not (self._pending or self._current is not None) or self._next_seq >= base + self.window
                   or self._next_seq >= self._peer_window_end)
        # nothing new can go out: rather than idle the line, resend what is overdue by a round trip
        probe = max(MIN_PROBE, 1.5 * (self._srtt or self.rto)) if blocked else math.inf
        oldest = True
        for seq, entry in self._unacked.items():   # in sequence order
            if size >= _WRITE_BATCH:
                break
            # a timeout only for the oldest frame: later losses show up as soon as it is acked
            timed_out = oldest and now - entry.sent_at >= self.rto * min(8, 1 << min(entry.sends - 1, 3))
            oldest = False
            if timed_out and not entry.lost:
                self.stats["timeouts"] += 1
            if entry.lost or timed_out or now - entry.sent_at >= probe:
                if entry.sends >= self.max_sends:
                    self._fail(LinkError(f"frame {seq} unacknowledged after {entry.sends} sends"))
                    return out
                self._tx_counter += 1
                entry.tx_order, entry.sent_at, entry.lost = self._tx_counter, now, False
                entry.sends += 1
                if entry.sends > 1:
                    self.stats["retransmits"] += 1
                out.append(entry.frame)
                size += len(entry.frame)
        while ((self._pending or self._current is not None) and size < _WRITE_BATCH
               and self._next_seq < base + self.window and self._next_seq < self._peer_window_end):
            if self._current is None:
                self._current = memoryview(self._pending.popleft())
            piece, rest = self._current[:self.frame_size], self._current[self.frame_size:]
            self._current = rest if len(rest) else None
            entry = _Unacked(encode_frame(FrameType.DATA, self._next_seq, bytes(piece), key, more=bool(len(rest))))
            self._tx_counter += 1
            entry.tx_order, entry.sent_at, entry.lost, entry.sends = self._tx_counter, now, False, 1
            self._unacked[self._next_seq] = entry
            self._next_seq += 1
            self.stats["frames_sent"] += 1
            self.stats["max_in_flight"] = max(self.stats["max_in_flight"], len(self._unacked))
            out.append(entry.frame)
            size += len(entry.frame)
        if self._sent_count >= _ADAPT_EVERY:
            self._adapt()
        if self._close_due and not self._pending and self._current is None:
            out.append(encode_frame(FrameType.CLOSE, self._next_seq, b"", key))
            self._close_due = False
        return out

    def _write_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                frames = self._collect(time.monotonic())
                if not frames:
                    wait = 0.02
                    if self._ack_pending_since is not None:
                        wait = max(0.0, min(wait, self._ack_pending_since + ACK_DELAY - time.monotonic()))
                    self._tx.wait(wait)
                    frames = self._collect(time.monotonic())
                if frames:
                    self._last_sent = time.monotonic()
                    self._space.notify_all()
            if not frames:
                continue
            try:
                data = b"".join(frames)
                self._write(data)
                self.stats["bytes_out"] += len(data)
            except (OSError, serial.SerialException, ValueError, TypeError) as exc:
                if not self._stop.is_set():
                    self._fail(LinkClosed(f"the port failed: {exc}"))
                return
