"""BackgroundOutput: hands frames to a slow sink on a thread of its own.

The encoder thread (picamera2's, or our PyAV capture thread) calls ``outputframe``
and must never wait for a disk: the sealer fsyncs every GOP, an SD card's fsync can
take tens of milliseconds, and at activation the whole pre-event buffer (≈ 30 s,
tens of MB) is handed over at once. A stalled encoder thread drops frames at the
camera; a queue in RAM does not.

Frames keep their order. ``call(fn)`` queues work between frames, so a marker lands
exactly after the frame the officer saw. The queue is bounded in bytes: if the disk
falls that far behind, ``outputframe`` blocks (back-pressure) rather than drop
evidence silently. The first error from the sink stops forwarding; it is kept in
``failure`` and reported once to ``on_failure`` on a short-lived thread of its own,
since the callback usually stops the recording, which needs the buffer's lock.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Callable

from buffer.frame import Frame, Output

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 256 * 1024 * 1024


class BackgroundOutput:
    """An ``Output`` that forwards to ``target`` from a writer thread."""

    def __init__(
        self,
        target: Output,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        on_failure: Callable[[BaseException], None] | None = None,
        name: str = "sealer",
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.target = target
        self.failure: BaseException | None = None
        self._max_bytes = max_bytes
        self._on_failure = on_failure
        self._queue: deque[Frame | Callable[[], object]] = deque()
        self._queued_bytes = 0
        self._queued = 0  # items ever queued
        self._done = 0    # items ever finished (written, called or skipped after a failure)
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- the encoder thread's side -------------------------------------------------------------

    def outputframe(
        self,
        frame: bytes,
        keyframe: bool = True,
        timestamp: int | None = None,
        packet: object = None,
        audio: bool = False,
    ) -> None:
        """Queue one frame; blocks only while ``max_bytes`` are already waiting."""
        with self._cond:
            if self._closing:
                raise RuntimeError("BackgroundOutput is closed")
            def full() -> bool:
                return bool(self._queued_bytes) and self._queued_bytes + len(frame) > self._max_bytes \
                    and self.failure is None

            if full():
                log.warning("sink %d bytes behind: the encoder waits for the disk", self._queued_bytes)
                self._cond.wait_for(lambda: not full())
            self._put(Frame(frame, keyframe, timestamp, audio), len(frame))

    def call(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the writer thread after every frame queued so far."""
        with self._cond:
            if self._closing:
                raise RuntimeError("BackgroundOutput is closed")
            self._put(fn, 0)

    # -- the control side ----------------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        """Bytes of frames queued and not yet written."""
        with self._cond:
            return self._queued_bytes

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until everything queued before this call has been handled; False on timeout."""
        with self._cond:
            target = self._queued
            return self._cond.wait_for(lambda: self._done >= target, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Write out everything queued, then stop the writer thread. Idempotent."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"sink still writing after {timeout} s")

    # -- the writer thread ---------------------------------------------------------------------

    def _put(self, item: Frame | Callable[[], object], size: int) -> None:
        self._queue.append(item)
        self._queued_bytes += size
        self._queued += 1
        self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return  # closing and drained
                item = self._queue.popleft()
            try:
                if self.failure is None:
                    if isinstance(item, Frame):
                        if item.audio:
                            self.target.outputframe(item.data, False, item.timestamp_us, None, True)
                        else:
                            self.target.outputframe(item.data, item.keyframe, item.timestamp_us)
                    else:
                        item()
            except Exception as exc:  # noqa: BLE001 - kept, reported, and forwarding stops
                self._fail(exc)
            finally:
                with self._cond:
                    if isinstance(item, Frame):
                        self._queued_bytes -= len(item.data)
                    self._done += 1
                    self._cond.notify_all()

    def _fail(self, exc: BaseException) -> None:
        log.error("sink failed, no more frames forwarded: %s", exc)
        with self._cond:
            self.failure = exc
            self._cond.notify_all()
        if self._on_failure is not None:
            threading.Thread(target=self._on_failure, args=(exc,), name="sink-failed", daemon=True).start()
