#!/usr/bin/env python3
"""Re-check, one at a time, that each deliberate breakage of a security check makes a named test fail
(``make breakages``; the table is TESTING.md's "Which test guards which check").

Usage:
    python tests/mutation/breakages.py REPO_DIR [N ...]        # all entries, or the numbered ones (1 5a 11)
    python tests/mutation/breakages.py REPO_DIR --dry [N ...]  # no pytest: every `old` occurs exactly once,
                                                               # the broken file parses, every test exists

It edits the working tree while each test runs (and always puts the file back): run it in a
tree nobody else is using. Not collected by pytest.

For each entry: read the file, assert `old` occurs exactly once, write the broken version, run
    REPO_DIR/.venv/bin/python -m pytest -x -q -p no:randomly <node ids>
with cwd=REPO_DIR and a 300 s timeout, and ALWAYS restore the original bytes (and mtime) in a
`finally`, also on KeyboardInterrupt / SIGTERM.

An entry number given as "5" or "11" selects every sub-entry (5a, 5b / 11a, 11b).
"""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

TIMEOUT_S = 300

HOSTILE = "tests/dock/test_hostile_peers.py"
FORKS = "tests/secure_store/test_forks_and_fields.py"
GUARDS = "tests/firmware/test_guards.py"


@dataclass(frozen=True)
class Breakage:
    n: str
    what: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


B = Breakage
ENTRIES: list[Breakage] = [
    B("1", "dock confirms segments that failed verification", "dock/client.py",
      "    for name in wanted:\n        if name in bad:\n            continue\n",
      "    for name in wanted:\n        if False:\n            continue\n",
      (f"{HOSTILE}::test_a_segment_that_fails_verification_is_never_confirmed",)),
    B("2", "device skips the dock's AUTH signature check", "link/session.py",
      '            dock_key.verify(auth, b"dock" + transcript)\n',
      "            pass\n",
      (f"{HOSTILE}::test_dock_with_an_enrolled_public_key_but_not_its_private_key_is_refused",)),
    B("3", "dock skips the device's HELLO_REPLY signature check", "link/session.py",
      '        device_key.verify(signature, b"device" + transcript)\n',
      "        pass\n",
      (f"{HOSTILE}::test_device_that_cannot_sign_for_the_key_it_presents_is_refused",)),
    B("4", "verifier stops comparing prev_digest", "secure_store/verify.py",
      "            elif b.prev_digest != a.digest:\n",
      "            elif False:\n",
      (f"{FORKS}::test_a_validly_signed_segment_from_a_fork_breaks_the_chain",)),
    B("5a", "dock accepts any listed name (evidence name filter)", "dock/client.py",
      "items = [i for i in client.list_evidence() if _NAME_RE.fullmatch(i.name)]",
      "items = [i for i in client.list_evidence() if True]",
      (f"{HOSTILE}::test_hostile_names_in_the_listing_write_nothing_outside_the_archive",)),
    B("5b", "dock accepts any listed name (audit name filter)", "dock/client.py",
      'if i.kind == "audit" and _NAME_RE.fullmatch(i.name)]',
      'if i.kind == "audit" and True]',
      (f"{HOSTILE}::test_hostile_names_in_the_listing_write_nothing_outside_the_archive",)),
    B("6", "anti-rollback floor ignored (only the running version compared)", "firmware/update/install.py",
      "    if new <= parse_version(running) or new <= parse_version(floor):\n",
      "    if new <= parse_version(running):\n",
      ("tests/firmware/test_update.py::test_floor_above_the_running_version_still_refuses_older_images",)),
    B("7", "link header CRC skipped", "link/protocol.py",
      "if zlib.crc32(head) != hcrc or length > self.max_payload",
      "if length > self.max_payload",
      (f"{HOSTILE}::test_a_frame_with_a_damaged_header_is_dropped_not_misread",)),
    B("8", "download not checked against the listed SHA-256", "dock/client.py",
      "        elif self.digest.hexdigest() == self.item.sha256:\n",
      "        elif True:\n",
      (f"{HOSTILE}::test_bytes_that_do_not_hash_as_listed_are_never_archived_or_confirmed",)),
    B("9", "non-contiguous chunk offsets accepted", "dock/client.py",
      '                if message.meta.get("offset") != r.offset + r.received:\n',
      "                if False:\n",
      (f"{HOSTILE}::test_chunks_out_of_place_are_refused",)),
    B("10", "recovery's 'sequence follows the chain head' skipped", "secure_store/recovery.py",
      "        if header.segment_seq != store.chain_head.next_seq:\n",
      "        if False:\n",
      (f"{FORKS}::test_recovery_sets_aside_a_torn_segment_that_does_not_follow_the_chain_head",)),
    B("11a", "resume offset one byte too far (+1)", "dock/client.py",
      "        offset = self.part.stat().st_size if self.part.exists() else 0\n",
      "        offset = self.part.stat().st_size + 1 if self.part.exists() else 0\n",
      (f"{HOSTILE}::test_resume_asks_only_for_the_missing_bytes",)),
    B("11b", "resume offset one byte short (-1)", "dock/client.py",
      "        offset = self.part.stat().st_size if self.part.exists() else 0\n",
      "        offset = max(0, self.part.stat().st_size - 1) if self.part.exists() else 0\n",
      (f"{HOSTILE}::test_resume_asks_only_for_the_missing_bytes",)),
    B("12", "daemon never writes state/recording", "firmware/device.py",
      "            update.set_recording(self.root, self.machine.recording.recording_id)\n",
      "            pass\n",
      (f"{GUARDS}::test_daemon_flags_a_recording_so_no_firmware_is_installed_under_it",)),
    B("13", "stealth does not cut a cue already sounding", "firmware/signals.py",
      "            if self._stealth:\n"
      "                _drive(self._buzzer, None)\n"
      "                _drive(self._haptic, None)\n",
      "            if self._stealth:\n"
      "                pass\n",
      (f"{GUARDS}::test_stealth_cuts_a_cue_that_is_already_sounding",)),
    B("14a", "fsync removed: fsync_dir (directory fsync)", "secure_store/durable.py",
      "    try:\n        os.fsync(fd)\n",
      "    try:\n        pass\n",
      ("tests/secure_store/test_durability_order.py",)),
    B("14b", "fsync removed: write_atomic (file data fsync)", "secure_store/durable.py",
      "            view = view[os.write(fd, view):]\n        os.fsync(fd)\n",
      "            view = view[os.write(fd, view):]\n        pass\n",
      ("tests/secure_store/test_durability_order.py",)),
    B("14c", "fsync removed: each sealed chunk record", "secure_store/sealer.py",
      "                self._write_all(b\"\".join(parts)[written:])\n            os.fsync(self._fd)\n",
      "                self._write_all(b\"\".join(parts)[written:])\n            pass\n",
      ("tests/secure_store/test_durability_order.py",)),
    B("14d", "fsync removed: each audit entry", "secure_store/audit.py",
      "                view = view[os.write(fd, view):]\n            os.fsync(fd)\n",
      "                view = view[os.write(fd, view):]\n            pass\n",
      ("tests/secure_store/test_durability_order.py",)),
    B("15", "stored record digest not checked", "secure_store/segment_rules.py",
      "    if record.stored_digest != record.digest:\n",
      "    if False:\n",
      (f"{FORKS}::test_a_record_digest_field_altered_alone_is_reported",)),
    B("16a", "pre-event buffer cutoff strict (keyframe at the cutoff expires too late)", "buffer/prebuffer.py",
      "        while len(gops) > 1 and gops[1][0][2] <= cutoff_us:\n",
      "        while len(gops) > 1 and gops[1][0][2] < cutoff_us:\n",
      ("tests/buffer/test_prebuffer.py::test_expiry_after_every_frame_matches_the_rule_exactly",)),
    B("16b", "pre-event buffer expiry one frame late (trigger > instead of >=)", "buffer/prebuffer.py",
      "            if timestamp >= self._expire_at:\n",
      "            if timestamp > self._expire_at:\n",
      ("tests/buffer/test_prebuffer.py::test_expiry_after_every_frame_matches_the_rule_exactly",)),
]


class _Terminated(BaseException):
    """SIGTERM/SIGHUP turned into an exception so every `finally` (the restore) runs."""


def _on_signal(signum, _frame):
    raise _Terminated(f"signal {signum}")


def select(args: list[str]) -> list[Breakage]:
    if not args:
        return ENTRIES
    chosen, known = [], {e.n for e in ENTRIES}
    for a in args:
        hits = [e for e in ENTRIES if e.n == a or (a not in known and re.fullmatch(re.escape(a) + r"[a-z]", e.n))]
        if not hits:
            sys.exit(f"unknown entry {a!r}; entries: {', '.join(e.n for e in ENTRIES)}")
        chosen += [e for e in hits if e not in chosen]
    return chosen


def node_problem(repo: Path, node: str) -> str | None:
    """None if the test node exists (file exists; the function is defined in it), else why not."""
    path, _, rest = node.partition("::")
    f = repo / path
    if not f.is_file():
        return f"test file {path} missing"
    if not rest:
        return None
    func = rest.split("::")[-1].split("[")[0]
    if not re.search(rf"^\s*(async\s+)?def {re.escape(func)}\s*\(", f.read_text(), re.M):
        return f"no 'def {func}(' in {path}"
    return None


def check(repo: Path, e: Breakage) -> list[str]:
    """Problems with an entry (empty: fine), without running anything."""
    problems = []
    f = repo / e.file
    if not f.is_file():
        return [f"{e.file} missing"]
    text = f.read_text()
    count = text.count(e.old)
    if count != 1:
        problems.append(f"`old` occurs {count} times in {e.file} (want exactly 1)")
    else:
        broken = text.replace(e.old, e.new)
        try:
            ast.parse(broken, filename=e.file)
        except SyntaxError as exc:
            problems.append(f"broken {e.file} does not parse: {exc}")
        if len(broken.encode()) == len(text.encode()):
            # same size could let a stale .pyc (keyed on mtime + size) survive a same-second restore
            problems.append("broken file has the same size as the original")
    for node in e.tests:
        p = node_problem(repo, node)
        if p:
            problems.append(p)
    return problems


def _failed_ids(output: str) -> list[str]:
    ids = []
    for line in output.splitlines():
        m = re.match(r"^(FAILED|ERROR) (\S+)", line)
        if m and m.group(2) not in ids:
            ids.append(m.group(2))
    return ids


def run_one(repo: Path, e: Breakage) -> tuple[str, str]:
    """Apply the breakage, run its tests, restore. Returns (verdict, detail)."""
    f = repo / e.file
    original = f.read_bytes()
    st = f.stat()
    text = original.decode()
    count = text.count(e.old)
    if count != 1:
        return "SKIPPED", f"`old` occurs {count} times in {e.file}"
    cmd = [str(repo / ".venv/bin/python"), "-m", "pytest", "-x", "-q", "-p", "no:randomly", *e.tests]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")  # no .pyc of the broken module is ever written
    proc = None
    try:
        f.write_bytes(text.replace(e.old, e.new).encode())
        proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            return "TIMEOUT", f"pytest still running after {TIMEOUT_S} s (inconclusive)"
        rc = proc.returncode
    finally:
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        f.write_bytes(original)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert f.read_bytes() == original, f"RESTORE FAILED for {f}"
    failed = _failed_ids(out)
    if rc == 0:
        return "NOT CAUGHT", "(tests passed)"
    if rc == 1:
        return "CAUGHT", "(test failed) " + (", ".join(failed) if failed else "")
    tail = " / ".join(out.strip().splitlines()[-3:])
    return "ERROR", f"(pytest exit {rc}) " + (", ".join(failed) if failed else tail)


def main(argv: list[str]) -> int:
    dry = "--dry" in argv
    args = [a for a in argv if a != "--dry"]
    if not args:
        sys.exit(__doc__)
    repo = Path(args[0]).resolve()
    entries = select(args[1:])
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)

    if dry:
        bad = 0
        for e in entries:
            problems = check(repo, e)
            bad += bool(problems)
            print(f"{e.n:>3} | {e.what} | {e.file} | " + ("OK" if not problems else "PROBLEM: " + "; ".join(problems))
                  + f" | {' '.join(e.tests)}")
        print(f"\ndry run: {len(entries) - bad}/{len(entries)} entries OK" + (f", {bad} with problems" if bad else ""))
        return 1 if bad else 0

    tally: dict[str, int] = {}
    for e in entries:
        verdict, detail = run_one(repo, e)
        tally[verdict] = tally.get(verdict, 0) + 1
        print(f"{e.n:>3} | {e.what} | {verdict} {detail}", flush=True)
    print("\nsummary: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.items()))
          + f" (of {len(entries)})")
    return 0 if tally.get("CAUGHT", 0) == len(entries) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
