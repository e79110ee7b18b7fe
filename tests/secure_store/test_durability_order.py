"""Durability you can test: the order of write, fsync and rename on the real file system.

A SIGKILL keeps the page cache, so the power-cut tests cannot see a missing fsync; this
file can. ``os.write``/``os.writev``, ``os.fsync``, ``os.replace``/``os.rename``/``os.link``
are wrapped (the real calls still run) and every call is logged with the inode it touched
and, for fsync and rename, the file's size and mtime at that moment. The rules checked,
for a chunk, a manifest, the chain head and an audit entry:

- nothing is renamed (or linked) into place unless that inode was fsync'd, in the very
  state it is renamed in, before the rename;
- when the call returns, every file it wrote was fsync'd after its last write;
- every new name (a created file, a rename or link) is followed by an fsync of its directory;
- the chain head never names a manifest before that manifest's name is durable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Call:
    op: str                 # write | fsync | rename | create
    inode: tuple[int, int]  # (st_dev, st_ino) of the file written, synced or renamed
    state: tuple[int, int] = (0, 0)   # (size, mtime_ns) at an fsync or a rename
    path: str = ""          # rename: the destination; create: the new file


def _ident(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


def _state(st: os.stat_result) -> tuple[int, int]:
    return (st.st_size, st.st_mtime_ns)


class SyscallLog:
    """Wraps the os calls durability rests on, for the duration of one test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[Call] = []
        real = {name: getattr(os, name) for name in ("write", "writev", "fsync", "replace", "rename", "link", "open")}

        def write(fd, data):
            n = real["write"](fd, data)
            self.calls.append(Call("write", _ident(os.fstat(fd))))
            return n

        def writev(fd, buffers):
            n = real["writev"](fd, buffers)
            self.calls.append(Call("write", _ident(os.fstat(fd))))
            return n

        def fsync(fd):
            fd = fd if isinstance(fd, int) else fd.fileno()
            st = os.fstat(fd)
            real["fsync"](fd)
            self.calls.append(Call("fsync", _ident(st), _state(st)))

        def renamer(name):
            def rename(src, dst, *args, **kwargs):
                st = os.stat(src)
                self.calls.append(Call("rename", _ident(st), _state(st), os.path.abspath(dst)))
                return real[name](src, dst, *args, **kwargs)
            return rename

        def open_(path, flags, *args, **kwargs):
            existed = os.path.lexists(path) if isinstance(path, (str, os.PathLike)) else True
            fd = real["open"](path, flags, *args, **kwargs)
            if flags & os.O_CREAT and not existed:
                self.calls.append(Call("create", _ident(os.fstat(fd)), path=os.path.abspath(path)))
            return fd

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "writev", writev)
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", renamer("replace"))
        monkeypatch.setattr(os, "rename", renamer("rename"))
        monkeypatch.setattr(os, "link", renamer("link"))
        monkeypatch.setattr(os, "open", open_)

    def mark(self) -> int:
        return len(self.calls)

    def since(self, mark: int) -> list[Call]:
        return self.calls[mark:]


def check_rules(calls: list[Call]) -> list[str]:
    """Every violation of the rules in the module docstring, one line each."""
    problems = []
    for i, call in enumerate(calls):
        if call.op == "rename":
            synced = [c for c in calls[:i] if c.op == "fsync" and c.inode == call.inode]
            if not synced or synced[-1].state != call.state:
                problems.append(f"{call.path}: renamed into place before its data was fsync'd")
            elif any(c.op == "write" and c.inode == call.inode for c in calls[calls.index(synced[-1]):i]):
                problems.append(f"{call.path}: written after its fsync, then renamed")
        if call.op in ("rename", "create"):
            parent = _ident(os.stat(os.path.dirname(call.path)))
            if not any(c.op == "fsync" and c.inode == parent for c in calls[i + 1:]):
                problems.append(f"{call.path}: new name, but its directory was not fsync'd after")
    written = {c.inode for c in calls if c.op == "write"}
    for inode in written:
        last_write = max(i for i, c in enumerate(calls) if c.op == "write" and c.inode == inode)
        if not any(c.op == "fsync" and c.inode == inode for c in calls[last_write + 1:]):
            problems.append(f"inode {inode[1]}: written, not fsync'd before the call returned")
    return problems


def _rename_index(calls: list[Call], path: Path) -> int:
    found = [i for i, c in enumerate(calls) if c.op == "rename" and c.path == str(path.resolve())]
    assert found, f"{path.name} was never renamed or linked into place"
    return found[-1]


def test_chunk_manifest_and_chain_head_are_synced_before_they_count(device, h, monkeypatch):
    store = device()
    sealer = store.open_sealer()
    log = SyscallLog(monkeypatch)
    sealer.begin_segment("rec-1", 0)
    mark = log.mark()
    sealer.write_chunk(h.gop(0))                        # a chunk: durable when write_chunk returns
    first = log.since(mark)
    assert check_rules(first) == []
    segment = store.root.evidence / "seg-0000000001.seg"
    seg_inode = _ident(os.stat(segment))
    assert any(c.op == "write" and c.inode == seg_inode for c in first)
    assert [c for c in first if c.inode == seg_inode][-1] == Call("fsync", seg_inode, _state(os.stat(segment)))
    mark = log.mark()
    sealer.write_chunk(h.gop(5))
    assert check_rules(log.since(mark)) == []
    mark = log.mark()
    sealer.end_segment()                                # final chunk, manifest, chain head, audit entry
    sealing = log.since(mark)
    assert check_rules(sealing) == []
    manifest = store.root.evidence / "seg-0000000001.manifest"
    head = store.root.state / "evidence_chain.json"
    at_manifest, at_head = _rename_index(sealing, manifest), _rename_index(sealing, head)
    evidence_dir = _ident(os.stat(store.root.evidence))
    manifest_dir_synced = [i for i, c in enumerate(sealing) if c.op == "fsync" and c.inode == evidence_dir
                           and i > at_manifest]
    assert manifest_dir_synced and manifest_dir_synced[0] < at_head, \
        "the chain head moved on before the manifest's name was durable"
    assert [c for c in sealing if c.inode == seg_inode][-1].op == "fsync"


def test_audit_entries_are_synced_before_append_returns(device, monkeypatch):
    store = device()
    log = SyscallLog(monkeypatch)
    for n in range(3):
        mark = log.mark()
        store.audit.append("test_event", n=n)
        calls = log.since(mark)
        assert check_rules(calls) == []
        assert any(c.op == "write" for c in calls) and any(c.op == "fsync" for c in calls)


def test_the_checker_itself_catches_a_rename_before_fsync(tmp_path, monkeypatch):
    """The rules above can fail: a temp file renamed before its fsync, or never synced."""
    log = SyscallLog(monkeypatch)
    tmp, final = tmp_path / ".x.tmp", tmp_path / "x"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"data")
    os.replace(tmp, final)
    os.fsync(fd)
    os.close(fd)
    problems = check_rules(log.calls)
    assert any("renamed into place before" in p for p in problems)
    assert any("directory was not fsync'd" in p for p in problems)
