"""A deterministic synthetic microphone on the sensor clock: a tone burst at every whole second.

The sim camera stamps frame ``n`` at ``n / fps`` s; this microphone's sample ``k`` is heard
at ``k / sample_rate`` s on the same clock, and the only sound it makes is a short sine burst
starting exactly on every whole second (``burst_s`` long, at ``tone_hz``, starting at its
peak so the onset is sharp). After the whole
path — AAC encoding, the pre-event buffer, sealing, export to MP4 — a test finds the bursts
in the decoded audio (:func:`burst_onsets`) and compares their times with the times of the
video frames numbered ``second * fps``: the difference is the A/V offset the recording has.

Like the sim camera it never drops: ``read_until`` hands over every block in order, however
late it is asked. It delivers whole blocks of ``block`` samples (1024: one AAC frame), as a
sound card does, mono float32 in -1..1.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SimMicrophone", "burst_onsets"]


class SimMicrophone:
    """Synthetic microphone: ``read_until(t_us)`` gives every whole block heard before ``t_us``.

    >>> mic = SimMicrophone()
    >>> blocks = mic.read_until(1_000_000)   # [(samples, first_sample_number), ...]
    """

    def __init__(
        self,
        sample_rate: int = 48_000,
        block: int = 1024,
        burst_s: float = 0.010,
        tone_hz: float = 1000.0,
        level: float = 0.5,
        start_sample: int = 0,
    ) -> None:
        if sample_rate <= 0 or block <= 0:
            raise ValueError(f"sample_rate and block must be positive, not {sample_rate} and {block}")
        if not 0 < burst_s < 0.5 or not 0 < level <= 1:
            raise ValueError(f"burst_s must be in (0, 0.5) s and level in (0, 1], not {burst_s} and {level}")
        self.sample_rate, self.block = sample_rate, block
        self.burst_samples = round(burst_s * sample_rate)
        self.tone_hz, self.level = tone_hz, level
        self.next_sample = start_sample

    def render(self, first: int, count: int) -> np.ndarray:
        """Samples ``first`` .. ``first + count - 1``: a pure function of the sample number."""
        k = np.arange(first, first + count, dtype=np.int64)
        into_second = k % self.sample_rate
        tone = self.level * np.cos(2 * np.pi * self.tone_hz * into_second / self.sample_rate)
        return np.where(into_second < self.burst_samples, tone, 0.0).astype(np.float32)

    def read_until(self, timestamp_us: int) -> list[tuple[np.ndarray, int]]:
        """Every whole block whose last sample was heard before ``timestamp_us``, oldest first."""
        heard = timestamp_us * self.sample_rate // 1_000_000  # samples before this instant
        blocks = []
        while self.next_sample + self.block <= heard:
            blocks.append((self.render(self.next_sample, self.block), self.next_sample))
            self.next_sample += self.block
        return blocks

    def __repr__(self) -> str:
        return f"SimMicrophone({self.sample_rate} Hz, bursts of {self.burst_samples} samples at {self.tone_hz:g} Hz)"


def burst_onsets(samples: np.ndarray, sample_rate: int = 48_000, threshold: float = 0.1) -> list[int]:
    """Indices in ``samples`` where a burst starts: loud after at least 0.2 s of quiet.

    Lossy coding smears a burst's edge by a few samples; the onset is the first sample above
    ``threshold``, which an AAC round trip moves by well under a millisecond.
    """
    loud = np.flatnonzero(np.abs(samples) > threshold)
    if loud.size == 0:
        return []
    quiet_gap = int(0.2 * sample_rate)
    starts = loud[np.concatenate(([True], np.diff(loud) > quiet_gap))]
    return [int(i) for i in starts]
