"""Power cut: a real subprocess seals segments and is SIGKILLed again and again, at chosen points.

The kill points are deterministic: the sealer process kills itself (SIGKILL, no cleanup)
just before its N-th durability call (``os.write``/``writev``/``fsync``/``replace``/``rename``/
``link``/``unlink``), for every N over two whole segments, so every step of sealing a chunk,
a manifest, the chain head and an audit entry is cut once, however busy the machine is.
After each kill, recovery must keep every chunk the sealer had acknowledged (write_chunk
returned), lose at most the one chunk in flight, and leave a tree that verifies end to end
with the chain unbroken across every cut. (SIGKILL loses the process, not the page cache;
that the calls come in a safe order, fsync before rename, is checked by
test_durability_order.py.)
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

from recorder.chunk import decode_chunk
from secure_store.layout import DeviceRoot
from secure_store.verify import decrypt_chunks, read_manifest, verify_path, verify_segment

ROOT = Path(__file__).resolve().parents[2]
FRAMES_PER_CHUNK = 4
KILL_POINTS = range(1, 49)   # more than two whole segments (3 chunks each) of durability calls

# A zygote imports everything once, then forks one sealer per trial (fast trials on 2 busy cores).
ZYGOTE = r"""
import os, signal, sys
from buffer.frame import Frame
from secure_store import keys
from secure_store.audit import AuditLog
from secure_store.layout import DeviceRoot
from secure_store.store import EvidenceStore

_write = os.write

def say(text):
    _write(1, (text + "\n").encode())

def kill_at(n):
    # wrap the durability calls: just before the n-th, say which it is and die by SIGKILL
    count = [0]
    def wrap(name, real):
        def call(*args, **kwargs):
            count[0] += 1
            if count[0] == n:
                target = args[0]
                if isinstance(target, int):
                    try:
                        target = os.readlink(f"/proc/self/fd/{target}")
                    except OSError:
                        target = "?"
                say(f"kill {name} {os.path.basename(str(target))}")
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        return call
    for name in ("write", "writev", "fsync", "replace", "rename", "link", "unlink"):
        setattr(os, name, wrap(name, getattr(os, name)))

def seal_forever(root, rec, n):
    key = keys.load_private_key(root.device_key, "device")
    store = EvidenceStore(root, device_id="CAM-0001", signing_key=key,
                          agency_public_key=keys.load_public_key(root.agency_pub, "agency"),
                          audit=AuditLog(root.audit, key, "CAM-0001"), reserve_bytes=0)
    store.recover()
    sealer = store.open_sealer()
    say("ready")
    kill_at(n)
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
    root, rec, n = line.split()
    pid = os.fork()
    if pid == 0:
        seal_forever(DeviceRoot(root), rec, int(n))
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

    def run_and_kill(self, root: Path, rec: str, kill_point: int) -> tuple[int, str]:
        """Start a sealer that kills itself before its ``kill_point``-th durability call;
        returns the frames it acknowledged and the call it died at (e.g. "fsync seg-0000000003.seg")."""
        self.proc.stdin.write(f"{root} {rec} {kill_point}\n".encode())
        self.proc.stdin.flush()
        assert self.line().startswith(b"pid")
        acked, killed = 0, ""
        while not (line := self.line()).startswith(b"dead"):
            if line.startswith(b"ack"):
                acked = int(line.split()[1])
            elif line.startswith(b"kill"):
                killed = line.decode().split(" ", 1)[1].strip()
        assert killed, f"the sealer was not killed at call {kill_point}"
        return acked, killed

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


def test_sigkill_at_every_durability_call_loses_at_most_the_chunk_in_flight(tmp_path, keyset, h) -> None:
    root = h.provision_root(tmp_path / "device", keyset)
    kills: collections.Counter = collections.Counter()
    zygote = Zygote()
    for kill_point in KILL_POINTS:
        rec = f"cut-{kill_point}"
        acked, killed = zygote.run_and_kill(root.root, rec, kill_point)
        step = _step(killed)
        kills[step] += 1
        store = h.open_store(root, keyset)  # reboot; the audit log drops its own torn tail here
        recovered = store.recover()
        numbers, segs = recording_frames(root, rec, keyset.agency, keyset)
        where = f"killed at call {kill_point} ({killed})"
        assert numbers == list(range(len(numbers))), f"{where}: frames out of order or missing"
        assert acked <= len(numbers) <= acked + FRAMES_PER_CHUNK, f"{where}: acked {acked}, kept {len(numbers)}"
        assert [s.manifest.index for s in segs] == list(range(len(segs)))
        assert all(not s.manifest.recovered for s in segs[:-1])
        if step in ("writev segment", "fsync segment", "write manifest"):
            # cut inside an open segment, before its manifest was written: recovery seals exactly it
            assert recovered == [Path(segs[-1].path).stem] and segs[-1].manifest.recovered, where
        elif step == "write segment":
            # cut at its header: nothing of it was acknowledged; it is set aside, not sealed
            assert recovered == [] and list(root.evidence.glob("*.seg.unsealed")), where
        elif step != "fsync directory":
            # cut after the manifest was written: no recovery needed, the segment is sealed normally
            assert recovered == [] and not segs[-1].manifest.recovered, where
    zygote.close()
    # every kind of step was cut at least once (the calls' order is the code's, not the scheduler's)
    assert set(kills) >= {"write segment", "writev segment", "fsync segment", "write manifest", "fsync manifest",
                          "link manifest", "unlink manifest", "write chain head", "fsync chain head",
                          "replace chain head", "fsync directory", "write audit", "fsync audit"}, kills


def _step(killed: str) -> str:
    """ "fsync .seg-0000000003.manifest.tmp-123" → "fsync manifest": what kind of step was cut."""
    op, name = killed.split(" ", 1)
    if ".manifest" in name:
        return f"{op} manifest"
    if "evidence_chain" in name:
        return f"{op} chain head"
    if name.startswith("audit-"):
        return f"{op} audit"
    if name.endswith(".seg"):
        return f"{op} segment"
    return f"{op} directory"
    report = verify_path(root.root)  # the whole tree: chain unbroken across every cut, audit log intact
    assert report.ok, [str(p) for p in report.problems]
    chain = sorted(s.manifest.segment_seq for s in report.segments)
    assert chain == list(range(1, len(chain) + 1))
