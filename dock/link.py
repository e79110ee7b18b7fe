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
        self._cond = threading.Condition()
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
        self._ack_due = False
        self._close_due = False
        self._last_heard = time.monotonic()
        self._last_sent = 0.0
        self._error: LinkError | None = None
        self._peer_closed = False
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
        with self._cond:
            self._outbox.append(encode_frame(ftype, 0, payload, key))
            self._cond.notify_all()

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
        with self._cond:
            self._replies[(ftype, payload)] = reply

    def establish(self, send_key: bytes, recv_key: bytes, peer_window: int | None = None,
                  max_frame: int = DEFAULT_PAYLOAD) -> None:
        """Start the authenticated stream: from now on every frame is tagged and checked."""
        with self._cond:
            self._send_key, self._recv_key = send_key, recv_key
            self.max_frame = max(MIN_FRAME, min(max_frame, MAX_PAYLOAD))
            self.frame_size = min(self.frame_size, self.max_frame)
            if peer_window is not None:
                self._peer_window_end = max(1, min(self.window, peer_window))
            self._last_heard = time.monotonic()
            self._cond.notify_all()

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
        with self._cond:
            while len(self._pending) >= self.window:
                self._raise_if_failed()
                if deadline is not None and time.monotonic() >= deadline:
                    raise LinkTimeout("send window stayed full")
                self._cond.wait(0.1)
            self._raise_if_failed()
            self._pending.append(message)
            self._cond.notify_all()

    def recv(self, timeout: float | None = None) -> bytes:
        """The next message in order; LinkClosed once the peer has closed and all is read."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._delivered:
                self._raise_if_failed()
                if deadline is not None and time.monotonic() >= deadline:
                    raise LinkTimeout("no message from the peer in time")
                self._cond.wait(0.1)
            message = self._delivered.popleft()
            if len(self._delivered) == self.window // 2:
                self._ack_due = True  # the window reopened: tell the sender
                self._cond.notify_all()
            return message

    def flush(self, timeout: float) -> bool:
        """Wait until everything sent is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._unacked or self._current is not None:
                self._raise_if_failed()
                if time.monotonic() >= deadline:
                    return False
                self._cond.wait(0.05)
        return True

    def close(self, flush_timeout: float = 2.0) -> None:
        """Flush, tell the peer, stop the threads and close the port. Never raises."""
        if self._stop.is_set():
            return
        try:
            if self.established and self._error is None:
                self.flush(flush_timeout)
                with self._cond:
                    self._close_due = True
                    self._cond.notify_all()
                deadline = time.monotonic() + 0.5
                while self._close_due and time.monotonic() < deadline and self._error is None:
                    time.sleep(0.01)
        except LinkError:
            pass
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
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

    def _fail(self, error: LinkError) -> None:
        with self._cond:
            if self._error is None:
                self._error = error
                log.info("dock link failed: %s", error)
            self._cond.notify_all()

    def _read_chunk(self) -> bytes:
        fileno = getattr(self.port, "fileno", None)
        if fileno is not None:
            try:
                fd = fileno()
            except Exception:  # noqa: BLE001 - URL transports without a descriptor
                fd = None
            if fd is not None:
                ready, _, _ = select.select([fd], [], [], 0.1)
                if not ready:
                    return b""
                data = os.read(fd, 65536)
                if not data:
                    raise LinkClosed("the port hung up (cable pulled?)")
                return data
        return self.port.read(max(1, self.port.in_waiting))

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
                for frame in self.decoder.feed(data):
                    self._on_frame(frame)

    def _on_frame(self, frame: LinkFrame) -> None:
        if frame.type < FrameType.DATA:
            reply = self._replies.get((frame.type, frame.payload))
            if reply is not None:  # a repeat: our answer was lost on the way
                with self._cond:
                    self._outbox.append(reply)
                    self._cond.notify_all()
            elif self.established and frame.type == FrameType.HELLO:
                self._fail(LinkClosed("the peer started a new session"))
            elif not self.established:
                try:
                    self.handshake_frames.put_nowait(frame)
                except queue.Full:
                    self.stats["handshake_dropped"] += 1
            return
        key = self._recv_key
        if key is None or not frame.tag_ok(key):
            self.stats["bad_tags"] += 1
            return
        with self._cond:
            self._last_heard = time.monotonic()
            if frame.type == FrameType.DATA:
                self._on_data(frame.seq, frame.payload, bool(frame.flags & FLAG_MORE))
            elif frame.type == FrameType.ACK and _ACK.size <= len(frame.payload) <= _ACK.size + _SACK_BITS // 8:
                (window_end,) = _ACK.unpack_from(frame.payload)
                self._on_ack(frame.seq, int.from_bytes(frame.payload[_ACK.size:], "little"), window_end)
            elif frame.type == FrameType.CLOSE:
                self._peer_closed = True
            self._cond.notify_all()

    def _on_data(self, seq: int, payload: bytes, more: bool) -> None:
        self._ack_due = True
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
        if self._ack_due or now - self._last_sent >= self.heartbeat:
            out.append(self._ack_frame())
            self._ack_due = False
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
            with self._cond:
                frames = self._collect(time.monotonic())
                if not frames:
                    self._cond.wait(0.02)
                    frames = self._collect(time.monotonic())
                if frames:
                    self._last_sent = time.monotonic()
                    self._cond.notify_all()
            if not frames:
                continue
            try:
                data = b"".join(frames)
                self.port.write(data)
                self.stats["bytes_out"] += len(data)
            except (OSError, serial.SerialException, ValueError, TypeError) as exc:
                if not self._stop.is_set():
                    self._fail(LinkClosed(f"the port failed: {exc}"))
                return
