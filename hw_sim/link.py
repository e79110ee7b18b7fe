"""A simulated USB serial cable: two linked pty pairs, with faults injected in between.

The device end and the dock end each get a real tty path (``/dev/pts/N``) that pyserial
opens like ``/dev/ttyGS0`` or ``/dev/ttyACM0``. A relay thread per direction copies bytes
between the two pty masters and can damage them on the way, as a noisy cable would::

    device ── /dev/pts/A ═ master A ─┬─ relay (faults) ─┬─ master B ═ /dev/pts/B ── dock
                                     └──────────────────┘

Faults: bit errors at a given rate, dropped bytes, stalls, and a disconnect after N bytes
(both masters closed: each end then sees EOF / ``SerialException``, as when a cable is yanked).
Bit errors are independent (random gaps between them), or ``spread`` evenly over every read
(each read gets its share, evenly spaced: no frame longer than the spacing ever passes clean,
the worst case for a protocol that sizes its frames by the error rate).
Optional symlinks (``link_a``/``link_b``) appear while the cable is plugged in and vanish
when it is pulled, like udev's ``/dev/serial/by-id`` names.
"""

from __future__ import annotations

import logging
import math
import os
import pty
import random
import select
import threading
import time
import tty
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_READ_SIZE = 65536


@dataclass
class Faults:
    """What the relay does to the bytes in one direction (defaults: a perfect cable)."""

    bit_error_rate: float = 0.0      # probability that any one bit is flipped
    drop_rate: float = 0.0           # probability that any one byte is lost
    stall_every: int = 0             # after every N bytes ...
    stall_s: float = 0.0             # ... hold the line for this long
    seed: int | None = None
    spread: bool = False             # bit errors evenly spaced within every read, not at random


class _Injector:
    """Applies ``Faults`` to a byte stream; draws gaps between events, not a coin per bit."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self.rng = random.Random(faults.seed)
        self.bit_errors = 0
        self.dropped = 0
        self._to_flip = self._gap(faults.bit_error_rate)
        self._to_drop = self._gap(faults.drop_rate)
        self._to_stall = faults.stall_every or math.inf
        self._owed = self.rng.random()   # spread: fraction of a bit error carried to the next read

    def _gap(self, rate: float) -> float:
        """Units until the next event for a Bernoulli process of ``rate`` (geometric)."""
        if rate <= 0:
            return math.inf
        if rate >= 1:
            return 0
        return int(math.log(1.0 - self.rng.random()) / math.log(1.0 - rate))

    def _spread_errors(self, buf: bytearray) -> None:
        """Flip this read's share of bit errors (rate × its bits, the fraction carried on),
        evenly spaced across it."""
        bits = len(buf) * 8
        self._owed += bits * self.faults.bit_error_rate
        count = int(self._owed)
        self._owed -= count
        for i in range(count):
            bit = int((i + 0.5) * bits / count)
            buf[bit // 8] ^= 1 << (bit % 8)
        self.bit_errors += count

    def apply(self, data: bytes) -> tuple[bytes, float]:
        """Damaged copy of ``data`` and how long to stall before sending it."""
        stall = 0.0
        if self._to_stall < math.inf:
            self._to_stall -= len(data)
            if self._to_stall <= 0:
                stall = self.faults.stall_s
                self._to_stall = self.faults.stall_every
        if self._to_flip >= len(data) * 8 and self._to_drop >= len(data) and not self.faults.spread:
            self._to_flip -= len(data) * 8
            self._to_drop -= len(data)
            return data, stall
        buf = bytearray(data)
        if self.faults.spread:
            self._spread_errors(buf)
        else:
            bit = self._to_flip
            while bit < len(buf) * 8:
                buf[int(bit) // 8] ^= 1 << (int(bit) % 8)
                self.bit_errors += 1
                bit += 1 + self._gap(self.faults.bit_error_rate)
            self._to_flip = bit - len(buf) * 8
        drops = []
        pos = self._to_drop
        while pos < len(buf):
            drops.append(int(pos))
            pos += 1 + self._gap(self.faults.drop_rate)
        self._to_drop = pos - len(buf)
        for index in reversed(drops):
            del buf[index]
        self.dropped += len(drops)
        return bytes(buf), stall


def _open_raw_pty() -> tuple[int, int, str]:
    master, slave = pty.openpty()
    tty.setraw(slave)  # no echo, no line discipline: bytes pass untouched
    os.set_blocking(master, False)  # the relay never blocks, so unplug() is always prompt
    return master, slave, os.ttyname(slave)


class LinkedPtys:
    """Two tty paths joined by a relay: ``a_path`` (device end) and ``b_path`` (dock end).

    ``faults`` applies to both directions (each with its own random stream), or give
    ``a_to_b`` / ``b_to_a`` separately. ``disconnect_after`` counts bytes relayed in both
    directions together. Use as a context manager; ``unplug()`` pulls the cable early.
    """

    def __init__(
        self,
        faults: Faults | None = None,
        *,
        a_to_b: Faults | None = None,
        b_to_a: Faults | None = None,
        disconnect_after: int | None = None,
        link_a: str | Path | None = None,
        link_b: str | Path | None = None,
    ) -> None:
        base = faults or Faults()
        self.a_to_b = _Injector(a_to_b or base)
        if b_to_a is None and base.seed is not None:
            b_to_a = Faults(**{**base.__dict__, "seed": base.seed + 1})
        self.b_to_a = _Injector(b_to_a or base)
        self.disconnect_after = disconnect_after
        self.bytes_relayed = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._master_a, self._slave_a, self.a_path = _open_raw_pty()
        self._master_b, self._slave_b, self.b_path = _open_raw_pty()
        self._links = [Path(p) for p in (link_a, link_b) if p is not None]
        if link_a is not None:
            self._symlink(Path(link_a), self.a_path)
            self.a_path = str(link_a)
        if link_b is not None:
            self._symlink(Path(link_b), self.b_path)
            self.b_path = str(link_b)
        self._threads = [
            threading.Thread(target=self._relay, args=(self._master_a, self._master_b, self.a_to_b),
                             name="pty-relay-a>b", daemon=True),
            threading.Thread(target=self._relay, args=(self._master_b, self._master_a, self.b_to_a),
                             name="pty-relay-b>a", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _symlink(link: Path, target: str) -> None:
        tmp = link.with_name(f".{link.name}.tmp")
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        os.replace(tmp, link)

    @property
    def connected(self) -> bool:
        return not self._closed.is_set()

    def _relay(self, src: int, dst: int, injector: _Injector) -> None:
        try:
            while not self._closed.is_set():
                ready, _, _ = select.select([src], [], [], 0.05)
                if not ready:
                    continue
                try:
                    data = os.read(src, _READ_SIZE)
                except BlockingIOError:
                    continue
                except OSError:  # EIO: no one has the slave open just now; keep waiting
                    time.sleep(0.01)
                    continue
                if not data:
                    continue
                cut = False
                with self._lock:
                    if self.disconnect_after is not None:
                        room = self.disconnect_after - self.bytes_relayed
                        if room <= len(data):
                            data, cut = data[:max(room, 0)], True
                    self.bytes_relayed += len(data)
                data, stall = injector.apply(data)
                if stall:
                    time.sleep(stall)
                view = memoryview(data)
                while view and not self._closed.is_set():
                    _, writable, _ = select.select([], [dst], [], 0.05)
                    if writable:
                        try:
                            view = view[os.write(dst, view):]
                        except BlockingIOError:
                            pass
                if cut:
                    log.info("simulated cable pulled after %d bytes", self.bytes_relayed)
                    self.unplug()
                    return
        except OSError as exc:
            if not self._closed.is_set():
                log.warning("pty relay stopped: %s", exc)

    def unplug(self) -> None:
        """Pull the cable: both ends see a hang-up; the symlinks (if any) disappear."""
        if self._closed.is_set():
            return
        self._closed.set()
        for link in self._links:
            link.unlink(missing_ok=True)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=1.0)
        for fd in (self._master_a, self._master_b, self._slave_a, self._slave_b):
            try:
                os.close(fd)
            except OSError:
                pass

    close = unplug

    def stats(self) -> dict[str, int]:
        return {
            "bytes_relayed": self.bytes_relayed,
            "bit_errors": self.a_to_b.bit_errors + self.b_to_a.bit_errors,
            "dropped": self.a_to_b.dropped + self.b_to_a.dropped,
        }

    def __enter__(self) -> "LinkedPtys":
        return self

    def __exit__(self, *exc: object) -> None:
        self.unplug()


def main(argv: list[str] | None = None) -> int:
    """``python -m hw_sim.link``: run a simulated cable until stdin closes or it is unplugged.

    Prints the device-end and dock-end paths on one line, so scripts and benchmarks can
    put the relay in a process of its own.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m hw_sim.link", description=main.__doc__)
    parser.add_argument("--ber", type=float, default=0.0, help="bit error rate")
    parser.add_argument("--spread", action="store_true",
                        help="bit errors evenly spaced within every read instead of independent")
    parser.add_argument("--drop", type=float, default=0.0, help="probability of dropping each byte")
    parser.add_argument("--stall-every", type=int, default=0, help="stall after every N bytes")
    parser.add_argument("--stall", type=float, default=0.0, help="stall length in seconds")
    parser.add_argument("--disconnect-after", type=int, default=None, help="pull the cable after N bytes")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--link-a", help="symlink for the device end")
    parser.add_argument("--link-b", help="symlink for the dock end")
    args = parser.parse_args(argv)
    faults = Faults(args.ber, args.drop, args.stall_every, args.stall, args.seed, args.spread)
    with LinkedPtys(faults, disconnect_after=args.disconnect_after, link_a=args.link_a, link_b=args.link_b) as link:
        print(link.a_path, link.b_path, flush=True)
        while link.connected:
            ready, _, _ = select.select([sys.stdin], [], [], 0.2)
            if ready and not sys.stdin.buffer.read1(4096):
                break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
