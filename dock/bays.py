"""A dock station with several bays: one thread per port, and the store ingest alongside.

Why threads: each bay spends its time waiting on its own serial line, and one camera's
fault (a bad cable, a device that refuses, a crash in a pull) must never stall another
bay. Each ``Bay`` catches and reports its own failures and carries on; the ``IngestWorker``
drains the dock's durable queue into the evidence store in the background, backing off
while the store is unreachable.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dock.client import PullError, PullSummary, pull
from dock.ingest import Ingestor
from link.transport import LinkError

log = logging.getLogger(__name__)


def port_present(port: str) -> bool:
    """A pyserial URL is always "there"; a device node only while a camera is docked."""
    return "://" in port or os.path.exists(port)


class IngestWorker(threading.Thread):
    """Uploads whatever the dock queued, now and whenever ``wake()`` is called; retries an
    unreachable store with a growing pause (``min_pause`` .. ``max_pause`` seconds)."""

    def __init__(self, ingestor: Ingestor, stop: threading.Event, min_pause: float = 2.0,
                 max_pause: float = 60.0) -> None:
        super().__init__(name="ingest", daemon=True)
        self.ingestor, self.stop = ingestor, stop
        self.min_pause, self.max_pause = min_pause, max_pause
        self._wake = threading.Event()
        self.idle = threading.Event()     # set whenever the queue is empty

    def wake(self) -> None:
        self.idle.clear()
        self._wake.set()

    def run(self) -> None:
        try:
            self._drain_until_stopped()
        finally:
            self.idle.set()     # nobody waits for a worker that has stopped

    def _drain_until_stopped(self) -> None:
        pause = self.min_pause
        while not self.stop.is_set():
            self._wake.clear()
            try:
                _, left = self.ingestor.drain()
            except Exception:  # noqa: BLE001 - the worker must outlive any one failure
                log.exception("ingest worker: drain failed")
                left = 1
            if left:
                self._wake.wait(pause)
                pause = min(pause * 2, self.max_pause)
            else:
                pause = self.min_pause
                self.idle.set()
                self._wake.wait()


@dataclass
class Bay:
    """One port of the station, served on its own thread until ``stop`` is set."""

    port: str
    run_pull: Callable[[str], PullSummary]
    report: Callable[[str, PullSummary | Exception], None]
    stop: threading.Event
    interval: float = 60.0
    max_sessions: int = 0
    sessions: int = 0
    failures: int = 0
    thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> "Bay":
        self.thread = threading.Thread(target=self._serve, name=f"bay {self.port}", daemon=True)
        self.thread.start()
        return self

    def _serve(self) -> None:
        while not self.stop.is_set() and (not self.max_sessions or self.sessions < self.max_sessions):
            if not port_present(self.port):
                self.stop.wait(0.5)
                continue
            try:
                summary = self.run_pull(self.port)
            except (PullError, LinkError) as exc:
                self.failures += 1
                self.report(self.port, exc)
                self.stop.wait(1.0)
                continue
            except Exception as exc:  # noqa: BLE001 - one bay's bug must not take the station down
                log.exception("bay %s: pull failed", self.port)
                self.failures += 1
                self.report(self.port, exc)
                self.stop.wait(1.0)
                continue
            self.sessions += 1
            self.report(self.port, summary)
            if self.max_sessions and self.sessions >= self.max_sessions:
                break
            deadline = time.monotonic() + self.interval
            while port_present(self.port) and time.monotonic() < deadline and not self.stop.is_set():
                # docked still: pull again later, or as soon as it comes back after an undock
                self.stop.wait(0.1)


class DockStation:
    """Several bays pulling into one archive, with the evidence store ingest alongside."""

    def __init__(self, ports: list[str], out: str | Path, dock_key: Any, *, ingestor: Ingestor | None = None,
                 confirm_after: str = "store", interval: float = 60.0, max_sessions: int = 0,
                 report: Callable[[str, PullSummary | Exception], None] = lambda port, result: None,
                 **pull_kwargs: Any) -> None:
        self.ports, self.out, self.dock_key = list(dict.fromkeys(ports)), Path(out), dock_key
        self.ingestor, self.confirm_after = ingestor, confirm_after
        self.stop = threading.Event()
        self.worker = IngestWorker(ingestor, self.stop) if ingestor else None
        self.bays = [Bay(p, self.pull_one, report, self.stop, interval, max_sessions) for p in self.ports]
        self.pull_kwargs = pull_kwargs

    def pull_one(self, port: str) -> PullSummary:
        """One pull on ``port``; with a store, confirm only what it holds (or, "local", queue it)."""
        holds = self.ingestor.segment_held if self.ingestor and self.confirm_after == "store" else None
        summary = pull(port, self.out, self.dock_key, store_holds=holds, **self.pull_kwargs)
        if self.ingestor is not None and summary.device_id:
            device_dir = self.out / summary.device_id
            try:
                if self.confirm_after == "local" or not self.pull_kwargs.get("confirm", True):
                    # (otherwise segment_held queued them already)
                    for name in summary.verified:
                        self.ingestor.queue_segment(device_dir, name)
                self.ingestor.enqueue_device(device_dir)
            except OSError as exc:
                summary.problems.append(f"cannot queue for the evidence store: {exc.strerror}")
            if self.worker is not None:
                self.worker.wake()
        return summary

    def run(self) -> int:
        """Serve until every bay has done its ``max_sessions`` (or forever); 1 if any pull failed."""
        if self.worker is not None:
            self.worker.start()
        for bay in self.bays:
            bay.start()
        try:
            for bay in self.bays:
                while bay.thread is not None and bay.thread.is_alive():
                    bay.thread.join(0.5)
            if self.worker is not None and not self.stop.is_set():   # let the store catch up with the last pulls
                self.worker.wake()
                self.worker.idle.wait(timeout=self.drain_timeout)
        finally:
            self.stop.set()
            if self.worker is not None:
                self.worker.wake()
        return 1 if any(b.failures for b in self.bays) else 0

    drain_timeout: float = 60.0
