"""Power cut: a real subprocess seals segments and is SIGKILLed at random moments, again and again.

After each kill, recovery must keep every chunk the sealer had acknowledged (write_chunk
returned), lose at most the one chunk in flight, and leave a tree that verifies end to end
with the chain unbroken across every cut. (SIGKILL loses the process, not the page cache;
the fsync discipline that covers a real power loss is checked by reading the code paths:
every record is fsync'd before write_chunk returns, every manifest goes temp → fsync → rename.)
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from recorder.chunk import decode_chunk
from secure_store.layout import DeviceRoot
from secure_store.verify import decrypt_chunks, read_manifest, verify_path, verify_segment

ROOT = Path(__file__).resolve().parents[2]
TRIALS = 24
FRAMES_PER_CHUNK = 4

# A zygote imports everything once, then forks one sealer per trial (fast trials on 2 busy cores).
ZYGOTE = r"""
import os, sys
from buffer.frame import Frame
from secure_store import keys
from secure_store.audit import AuditLog
from secure_store.layout import DeviceRoot
from secure_store.store import EvidenceStore

def say(text):
    os.write(1, (text + "\n").encode())

def seal_forever(root, rec):
    key = keys.load_private_key(root.device_key, "device")
    store = EvidenceStore(root, device_id="CAM-0001", signing_key=key,
                          agency_public_key=keys.load_public_key(root.agency_pub, "agency"),
                          audit=AuditLog(root.audit, key, "CAM-0001"), reserve_bytes=0)
    store.recover()
    sealer = store.open_sealer()
    say("ready")
    n = index = 0
    while True:
        sealer.begin_segment(rec, index)
        for _ in range(3):
            frames = [Frame(b"\0\0\0\1" + (n + i).to_bytes(4, "big") + os.urandom(3000), i == 0, (n + i) * 33333)
                      for i in range(%d)]
            sealer.write_chunk(frames)
            n += len(frames)
            say(f"ack {n}")
        sealer.end_segment()
        index += 1

for line in sys.stdin:
    root, rec = line.split()
    pid = os.fork()
    if pid == 0:
        seal_forever(DeviceRoot(root), rec)
    say(f"pid {pid}")
    os.waitpid(pid, 0)
    say("dead")
""" % FRAMES_PER_CHUNK


class Zygote:
    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)

    def line(self) -> bytes:
        line = self.proc.stdout.readline()
        assert line, "zygote died"
        return line

    def run_and_kill(self, root: Path, rec: str, rng: random.Random) -> int:
        """Start a sealer, SIGKILL it at a random moment; returns the frames it acknowledged."""
        self.proc.stdin.write(f"{root} {rec}\n".encode())
        self.proc.stdin.flush()
        pid = int(self.line().split()[1])
        while not self.line().startswith(b"ready"):
            pass
        time.sleep(rng.uniform(0.0, 0.2))
        os.kill(pid, signal.SIGKILL)
        acked = 0
        while not (line := self.line()).startswith(b"dead"):
            if line.startswith(b"ack"):
                acked = int(line.split()[1])
        return acked

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


def recording_frames(root: DeviceRoot, rec: str, agency, keyset) -> tuple[list[int], list]:
    segs = []
    for path in sorted(root.evidence.glob("*.seg")):
        if read_manifest(path.with_suffix(".manifest")).recording_id == rec:
            seg, problems = verify_segment(path, keyset.device.public_key())
            assert not problems, [str(p) for p in problems]
            segs.append(seg)
    numbers = [int.from_bytes(f.data[4:8], "big")
               for s in segs for chunk in decrypt_chunks(Path(s.path), agency) for f in decode_chunk(chunk)]
    return numbers, segs


def test_sigkill_at_random_moments_loses_at_most_the_chunk_in_flight(tmp_path, keyset, h) -> None:
    root = h.provision_root(tmp_path / "device", keyset)
    rng = random.Random(1234)
    recovered_segments = 0
    zygote = Zygote()
    for trial in range(TRIALS):
        rec = f"trial-{trial}"
        acked = zygote.run_and_kill(root.root, rec, rng)
        store = h.open_store(root, keyset)  # reboot; the audit log drops its own torn tail here
        recovered_segments += len(store.recover())
        numbers, segs = recording_frames(root, rec, keyset.agency, keyset)
        assert numbers == list(range(len(numbers))), f"trial {trial}: frames out of order or missing"
        assert acked <= len(numbers) <= acked + FRAMES_PER_CHUNK, f"trial {trial}: acked {acked}, kept {len(numbers)}"
        assert [s.manifest.index for s in segs] == list(range(len(segs)))
        assert all(not s.manifest.recovered for s in segs[:-1])
    zygote.close()
    assert recovered_segments >= 3  # many kills land mid-segment, so recovery really ran
    report = verify_path(root.root)  # the whole tree: chain unbroken across every cut, audit log intact
    assert report.ok, [str(p) for p in report.problems]
    chain = sorted(s.manifest.segment_seq for s in report.segments)
    assert chain == list(range(1, len(chain) + 1))
