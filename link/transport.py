"""The reliable, windowed, authenticated stream both ends of the dock link run.

Selective repeat over a lossy serial line (docs/PROTOCOL.md §3): up to ``window`` DATA
frames in flight; the receiver answers with cumulative + selective ACKs and the edge of
its receive window; the sender retransmits a frame when a later one is acknowledged
(the line is FIFO, so that frame was lost) or when it has waited ``rto`` seconds.

One reader thread only reads and decodes (it never blocks on anything but the port, so
neither end can deadlock the other); one writer thread owns every write. The handshake
(link.session) sends its frames through the same threads before ``establish()``.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import select
import threading
import time
from typing import Any, Iterable

import serial

from link.arq import ACK, ACK_DELAY, MAX_MESSAGE, MIN_FRAME, SACK_BITS, ArqError, Receiver, Sender
from link.port import LinkClosed, LinkError, LinkTimeout, PortBusy, open_port
from link.protocol import DEFAULT_PAYLOAD, FLAG_MORE, MAX_PAYLOAD, FrameDecoder, FrameType, LinkFrame, encode_frame

__all__ = ["Link", "LinkClosed", "LinkError", "LinkTimeout", "PortBusy", "open_port", "MAX_MESSAGE"]

log = logging.getLogger(__name__)

_WRITE_BATCH = 65536


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
        give_up: float | None = None,
        frame_size: int = 1024,
    ) -> None:
        self.port = port
        self.window = min(window, SACK_BITS)
        self.idle_timeout = idle_timeout
        self.heartbeat = heartbeat
        self.decoder = FrameDecoder(MAX_PAYLOAD)
        self.stats: collections.Counter[str] = collections.Counter()
        # give up when nothing is acknowledged for as long as a silent peer is waited for
        self.sender = Sender(self.window, self.stats, rto=rto, give_up=idle_timeout if give_up is None else give_up,
                             frame_size=frame_size, max_frame=DEFAULT_PAYLOAD)
        self.receiver = Receiver(self.window, self.stats)
        self.handshake_frames: queue.Queue[LinkFrame] = queue.Queue(maxsize=64)
        self._lock = threading.RLock()
        self._rx = threading.Condition(self._lock)      # messages delivered (recv waits)
        self._tx = threading.Condition(self._lock)      # work for the writer
        self._space = threading.Condition(self._lock)   # room to send, or all acknowledged
        self._send_key: bytes | None = None
        self._recv_key: bytes | None = None
        self._outbox: collections.deque[bytes] = collections.deque()   # unsequenced (handshake) frames
        self._close_due = False
        self._close_reason = b""                 # why we end the session, if it failed or was abandoned
        self._close_written = False              # the frames in hand include CLOSE
        self._close_sent = threading.Event()
        self._peer_reason = ""                   # why the peer ended it
        self._last_heard = time.monotonic()
        self._last_sent = 0.0
        self._error: LinkError | None = None
        self._peer_closed = False
        self._replies: dict[tuple[int, bytes], bytes] = {}
        self._stop = threading.Event()
        self._wake_reader, self._wake_reader_w = os.pipe()   # close() wakes the reader's poll at once
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
                  max_frame: int = DEFAULT_PAYLOAD, features: Iterable[str] = ()) -> None:
        """Start the authenticated stream: from now on every frame is tagged and checked.

        ``features`` the peer has: "part" (it takes PART frames, so a resend may be cut
        smaller than it was first sent), "repair1" (it repairs frames with one bit error,
        so frames may be longer on a noisy line).
        """
        features = set(features)
        with self._lock:
            self._send_key, self._recv_key = send_key, recv_key
            self.sender.recut, self.sender.peer_repairs = "part" in features, "repair1" in features
            self.sender.max_frame = max(MIN_FRAME, min(max_frame, MAX_PAYLOAD))
            self.sender.frame_size = min(self.sender.frame_size, self.sender.max_frame)
            if peer_window is not None:
                self.sender.peer_window_end = max(1, min(self.window, peer_window))
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
            while len(self.sender.pending) >= self.window:
                self._raise_if_failed(sending=True)
                if deadline is not None and time.monotonic() >= deadline:
                    raise LinkTimeout("send window stayed full")
                self._space.wait(0.1)
            self._raise_if_failed(sending=True)
            self.sender.pending.append(message)
            self._tx.notify()

    def recv(self, timeout: float | None = None) -> bytes:
        """The next message in order; LinkClosed once the peer has closed and all is read."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not self.receiver.delivered:
                self._raise_if_failed()
                if deadline is not None and time.monotonic() >= deadline:
                    raise LinkTimeout("no message from the peer in time")
                self._rx.wait(0.1)
            message = self.receiver.take()
            if self.receiver.ack_due:
                self._tx.notify()
            return message

    def flush(self, timeout: float) -> bool:
        """Wait until everything sent is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self.sender.idle:
                self._raise_if_failed(sending=True)
                if time.monotonic() >= deadline:
                    return False
                self._space.wait(0.05)
        return True

    def close(self, flush_timeout: float = 2.0, reason: str = "") -> None:
        """Flush, tell the peer, stop the threads and close the port. Never raises.

        With a ``reason`` (the session is abandoned: Ctrl-C, an error above the link) nothing
        is flushed: CLOSE goes out at once with the reason, so the peer ends now rather than
        waiting out its idle timeout, and its port is free for the next session.
        """
        if self._stop.is_set():
            return
        try:
            if self.established and self._error is None and not self._peer_closed:
                if not reason and not self.flush(flush_timeout):
                    reason = "closed with data not yet acknowledged"
                with self._lock:
                    self._close_reason = reason.encode()[:200]
                    self._close_due = True
                    self._tx.notify()
        except LinkError:
            pass
        if self.established and (self._close_due or self._close_written):
            self._close_sent.wait(0.5)   # the orderly CLOSE, or the one a failure queued
        self._stop.set()
        os.write(self._wake_reader_w, b"x")
        with self._lock:
            self._wake_all()
        for thread in self._threads:
            thread.join(timeout=2.0)
        for fd in (self._wake_reader, self._wake_reader_w):
            os.close(fd)
        try:
            self.port.close()
        except Exception:  # noqa: BLE001 - a vanished port may fail to close; nothing to lose
            pass

    def __enter__(self) -> "Link":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- internals --------------------------------------------------------------------------

    def _raise_if_failed(self, allow_peer_closed: bool = True, sending: bool = False) -> None:
        """Raise why the link cannot go on. A closed peer still lets us read what it sent
        before closing, but nothing more can be sent to it (it no longer reads)."""
        if self._error is not None:
            raise self._error
        if self._peer_closed and allow_peer_closed and (sending or not self.receiver.delivered):
            raise LinkClosed("the peer closed the session" + (f": {self._peer_reason}" if self._peer_reason else ""))
        if self._stop.is_set():
            raise LinkClosed("the link is closed")
        if self.established and time.monotonic() - self._last_heard > self.idle_timeout:
            self._fail(LinkTimeout(f"peer silent for {self.idle_timeout:.0f} s"))
            raise self._error  # type: ignore[misc]

    def _wake_all(self) -> None:
        for condition in (self._rx, self._tx, self._space):
            condition.notify_all()

    def _fail(self, error: LinkError) -> None:
        """Record why the link failed; the writer then sends CLOSE with that reason (unless
        the port itself failed), so the peer stops at once instead of timing out."""
        with self._lock:
            if self._error is None:
                self._error = error
                log.info("dock link failed: %s", error)
                if self.established and not self._peer_closed and not isinstance(error, LinkClosed):
                    self._close_reason = str(error).encode()[:200]
                    self._close_due = True
            self._wake_all()

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
        """Read, decode, dispatch. Kept lean: on a pty each wake-up brings only a few KiB."""
        try:
            fd = self._fd()
            if fd is None:  # a URL transport without a descriptor
                while not self._stop.is_set():
                    self._received(self.port.read(max(1, self.port.in_waiting)))
                return
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            poller.register(self._wake_reader, select.POLLIN)
            empty = 0
            while not self._stop.is_set():
                if not poller.poll(100) or self._stop.is_set():
                    continue
                data = os.read(fd, 65536)
                if data:
                    empty = 0
                    self._received(data)
                    continue
                # ready but empty: a hang-up, or (rarely) another reader of the same tty was faster
                empty += 1
                if empty >= 3:
                    raise LinkClosed("the port hung up (cable pulled?)")
                time.sleep(0.01)
        except LinkError as exc:
            self._fail(exc)
        except (OSError, serial.SerialException, ValueError, TypeError) as exc:
            if not self._stop.is_set():
                self._fail(LinkClosed(f"the port failed: {exc}"))
        except Exception as exc:  # noqa: BLE001 - a bug here must end the link, not silence it
            log.exception("dock link reader failed")
            self._fail(LinkError(f"internal error in the link reader: {exc}"))

    def _received(self, data: bytes) -> None:
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
        receiver = self.receiver
        with self._lock:
            now = self._last_heard = time.monotonic()
            delivered, ack_was_pending, acked = len(receiver.delivered), receiver.ack_pending_since, False
            try:
                for frame in authentic:
                    if frame.type == FrameType.DATA:
                        receiver.on_data(frame.seq, frame.payload, bool(frame.flags & FLAG_MORE), now)
                    elif frame.type == FrameType.PART:
                        receiver.on_part(frame.seq, frame.payload, bool(frame.flags & FLAG_MORE), now)
                    elif frame.type == FrameType.ACK and ACK.size <= len(frame.payload) <= ACK.size + SACK_BITS // 8:
                        (window_end,) = ACK.unpack_from(frame.payload)
                        self.sender.on_ack(frame.seq, int.from_bytes(frame.payload[ACK.size:], "little"),
                                           window_end, now)
                        acked = True
                    elif frame.type == FrameType.CLOSE:
                        if not self._peer_closed:
                            self._peer_reason = frame.payload.decode("utf-8", "replace")[:200]
                        self._peer_closed = True
            except ArqError as exc:
                self._fail(LinkError(str(exc)))
                return
            if len(receiver.delivered) != delivered or self._peer_closed:
                self._rx.notify_all()
            if acked:
                self._space.notify_all()
            if acked or receiver.ack_due or (ack_was_pending is None and receiver.ack_pending_since is not None):
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

    def _collect(self, now: float) -> list[bytes]:
        """Frames to write now, in order of urgency (called with the lock held)."""
        out = list(self._outbox)
        self._outbox.clear()
        if not self.established:
            return out
        key = self._send_key
        if self._error is not None or self._close_reason:
            # failed or abandoned: no more of the stream, only CLOSE with the reason, once
            if self._close_due:
                out += self._close_frames(key)
            return out
        if self.receiver.ack_wanted(now) or now - self._last_sent >= self.heartbeat:
            out.append(self.receiver.ack_frame(key))
        try:
            out += self.sender.frames(now, key, _WRITE_BATCH)
        except ArqError as exc:
            if self._last_heard < now - self.sender.give_up:   # not a bad line: no line at all
                self._fail(LinkTimeout(f"peer silent for {now - self._last_heard:.0f} s"))
            else:
                self._fail(LinkError(str(exc)))
        if self._close_due and self.sender.idle:
            out += self._close_frames(key)
        return out

    def _close_frames(self, key: bytes) -> list[bytes]:
        # CLOSE is not acknowledged: three copies, so one bad byte does not leave the peer waiting
        self._close_due, self._close_written = False, True
        return [encode_frame(FrameType.CLOSE, self.sender.next_seq, self._close_reason, key)] * 3

    def _write_loop(self) -> None:
        try:
            self._write_frames()
        except Exception as exc:  # noqa: BLE001 - a bug here must end the link, not silence it
            log.exception("dock link writer failed")
            self._fail(LinkError(f"internal error in the link writer: {exc}"))
            self._close_sent.set()

    def _write_frames(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                frames = self._collect(time.monotonic())
                if not frames:
                    wait = 0.02
                    if self.receiver.ack_pending_since is not None:
                        wait = max(0.0, min(wait, self.receiver.ack_pending_since + ACK_DELAY - time.monotonic()))
                    self._tx.wait(wait)
                    frames = self._collect(time.monotonic())
                if frames:
                    self._last_sent = time.monotonic()
                    self._space.notify_all()
                closing = self._close_written and not self._close_sent.is_set()
            if not frames:
                continue
            try:
                data = b"".join(frames)
                self._write(data)
                self.stats["bytes_out"] += len(data)
            except (OSError, serial.SerialException, ValueError, TypeError) as exc:
                if not self._stop.is_set():
                    self._fail(LinkClosed(f"the port failed: {exc}"))
                self._close_sent.set()
                return
            if closing:
                self._close_sent.set()
