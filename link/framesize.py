"""How long a DATA frame should be on the line as it is now: the error estimate and the choice.

Short frames waste the line on framing and both ends' per-frame work; long frames are lost
more often on a noisy line. ``link.arq.Sender`` feeds every send's fate to a ``LossEstimate``
and asks ``best_frame_size`` (docs/PROTOCOL.md §3).
"""

from __future__ import annotations

import math

from link.protocol import FRAME_OVERHEAD, HEADER_SIZE, REPAIR_LIMIT

MIN_FRAME = 128
# Per-frame cost in byte-equivalents: wire overhead, the ACKs and the CPU a frame costs at
# both ends (tag, CRC, wake-ups: about 2 KiB's worth at pty speeds, measured by bench dock).
COST_BYTES = FRAME_OVERHEAD + 2000
MEMORY = 64                 # the loss estimate forgets with this time constant (in outcomes)


def survival(ber: float, wire_bytes: float, repaired: bool) -> float:
    """Chance a frame of this size arrives usable: no bit error (exp(-λ), λ = 8·b·bytes),
    or, where the receiver repairs one flipped bit, at most one (exp(-λ)·(1+λ))."""
    lam = 8 * ber * wire_bytes
    return math.exp(-lam) * (1 + lam if repaired and wire_bytes <= REPAIR_LIMIT + HEADER_SIZE + 4 else 1)


class LossEstimate:
    """The line's bit error rate, smoothed over the last ~MEMORY frame outcomes.

    Every send is one outcome, lost or delivered, weighted by its size on the wire: frames
    of any size feed the same estimate, and one unlucky frame moves it by 1/MEMORY only.
    """

    def __init__(self) -> None:
        self.outcomes = self.losses = self.bits = 0.0

    def add(self, wire_bytes: int, lost: bool) -> None:
        keep = 1.0 - 1.0 / MEMORY
        self.outcomes = self.outcomes * keep + 1.0
        self.losses = self.losses * keep + lost
        self.bits = self.bits * keep + 8 * wire_bytes

    @property
    def loss_rate(self) -> float:
        return self.losses / self.outcomes if self.outcomes else 0.0

    def bit_error_rate(self, repaired: bool) -> float:
        """The b for which frames of the mean size seen would be lost as often as they were."""
        if not self.losses:
            return 0.0
        size = self.bits / self.outcomes / 8
        target = 1.0 - min(self.loss_rate, 0.99)
        low, high = 0.0, 1.0 / size             # bisection: survival falls as b grows
        while survival(high, size, repaired) > target:
            high *= 2
        for _ in range(40):
            mid = (low + high) / 2
            low, high = (mid, high) if survival(mid, size, repaired) > target else (low, mid)
        return (low + high) / 2


def best_frame_size(ber: float, repaired: bool, largest: int) -> int:
    """The payload size L (up to ``largest``) with the best goodput L/(L+C)·survival(L+H),
    C the cost of a frame in bytes' worth, H its framing."""
    if ber <= 0:
        return largest
    best, best_rate, size = MIN_FRAME, 0.0, float(MIN_FRAME)
    while size <= largest:
        rate = size / (size + COST_BYTES) * survival(ber, size + FRAME_OVERHEAD, repaired)
        if rate > best_rate:
            best, best_rate = int(size), rate
        size *= 1.04
    return best
