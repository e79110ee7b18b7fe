"""The dock station's side of the link: talk to one device, and pull its evidence.

``pull(port, out_dir, dock_key)`` is the whole job: connect, authenticate, sync the clock,
list, fetch everything new (resuming ``.part`` files), write durably, verify every segment
with the device's public key (signatures, hashes, chain) and only then confirm it, so the
device frees its space. A rerun fetches nothing twice. The dock keeps per device::

    OUT/<device_id>/identity.json      device key, pinned at the first pull
    OUT/<device_id>/evidence/seg-*.seg, seg-*.manifest
    OUT/<device_id>/audit/audit-*.log
"""

from __future__ import annotations

import errno
import hashlib
import inspect
import itertools
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from cryptography.hazmat.primitives.asymmetric import ed25519

from link.transport import Link, LinkError, open_port
from link.protocol import Kind, Message, ProtocolError, decode_message, encode_message
from link.session import Session, dock_handshake
from secure_store.durable import fsync_dir, write_atomic
from secure_store.errors import FormatError
from secure_store.custody import sealed_but_absent
from secure_store.trust import pulled_device_keys
from secure_store.receipts import write_pull_receipt
from dock.trust import DockTrust
from dock.ingest_parts import PartDigest
from secure_store.admission import AdmissionError

log = logging.getLogger(__name__)

_DEVICE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_NAME_RE = re.compile(r"(seg-\d{1,20}\.(seg|manifest))|(audit/[A-Za-z0-9][A-Za-z0-9._-]{0,127})")


class PullError(Exception):
    """A pull could not go on (device refused, key changed, link lost); nothing confirmed after it."""


class DeviceError(PullError):
    """The device answered a request with an error."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Range:
    """One fetch: bytes go to ``write`` in order; ``done(range)`` when the device has answered."""

    name: str
    offset: int
    length: int
    write: Callable[[bytes], None]
    done: Callable[["Range"], None] | None = None
    received: int = 0
    result: dict[str, Any] | DeviceError | None = None


@dataclass(frozen=True)
class RemoteItem:
    name: str
    size: int
    sha256: str
    kind: str


class DockClient:
    """Requests to one authenticated device over a ``Link``."""

    def __init__(self, link: Link, session: Session, timeout: float = 20.0) -> None:
        self.link, self.session, self.timeout = link, session, timeout
        self._ids = itertools.count(1)

    @classmethod
    def connect(cls, port: str, dock_key: ed25519.Ed25519PrivateKey, *, handshake_timeout: float = 10.0,
                window: int = 128, cert_chain: str = "") -> "DockClient":
        """Open ``port`` and authenticate both ways (AuthError if the device refuses this dock)."""
        link = Link(open_port(port), window=window)
        try:
            session = dock_handshake(link, dock_key, timeout=handshake_timeout, cert_chain=cert_chain)
        except BaseException:
            link.close()
            raise
        return cls(link, session)

    def close(self, reason: str = "") -> None:
        """End the session; with a ``reason`` at once (the device stops now, its port free)."""
        self.link.close(reason=reason)

    def __enter__(self) -> "DockClient":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:   # Ctrl-C or a failed pull: tell the device instead of leaving it to time out
            self.close(reason="dock interrupted" if issubclass(exc_type, KeyboardInterrupt)
                       else f"dock stopped: {exc}")

    def call(self, command: str, blob: bytes = b"", on_chunk: Callable[[int, bytes], None] | None = None,
             **args: Any) -> dict[str, Any]:
        """Send one command and wait for its response; CHUNKs before it go to ``on_chunk``.

        The generic entry point: new commands (firmware transfer) need no new client code.
        """
        request_id = next(self._ids)
        self.link.send(encode_message(Kind.REQUEST, request_id, {"cmd": command, **args}, blob))
        while True:
            message = self._receive()
            if message.request_id != request_id:
                continue  # a late answer to an abandoned request
            if message.kind == Kind.CHUNK and on_chunk is not None:
                offset = message.meta.get("offset")
                if not isinstance(offset, int):
                    raise PullError("device sent a chunk without an offset")
                on_chunk(offset, message.blob)
            elif message.kind == Kind.ERROR:
                raise DeviceError(f"device refused {command}: {message.meta.get('error', 'no reason')}",
                                  str(message.meta.get("code", "")))
            elif message.kind == Kind.RESPONSE:
                return message.meta

    def _receive(self) -> Message:
        try:
            return decode_message(self.link.recv(timeout=self.timeout))
        except ProtocolError as exc:
            raise PullError(f"device sent a malformed message: {exc}") from None

    def fetch_ranges(self, ranges: Iterable[Range], ahead: int = 4) -> None:
        """Fetch ranges with up to ``ahead`` requests queued at the device, so the line never
        idles between files; each range's ``done`` runs as soon as its answer is complete."""
        todo = iter(ranges)
        waiting: dict[int, Range] = {}

        def request_next() -> None:
            r = next(todo, None)
            if r is not None:
                request_id = next(self._ids)
                waiting[request_id] = r
                self.link.send(encode_message(Kind.REQUEST, request_id,
                                              {"cmd": "fetch", "name": r.name, "offset": r.offset, "length": r.length}))

        for _ in range(ahead):
            request_next()
        while waiting:
            message = self._receive()
            r = waiting.get(message.request_id)
            if r is None:
                continue
            if message.kind == Kind.CHUNK:
                if message.meta.get("offset") != r.offset + r.received:
                    raise PullError(f"{r.name}: chunk at {message.meta.get('offset')}, expected {r.offset + r.received}")
                r.write(message.blob)
                r.received += len(message.blob)
                continue
            if message.kind == Kind.ERROR:
                r.result = DeviceError(f"device refused fetch: {message.meta.get('error', 'no reason')}",
                                       str(message.meta.get("code", "")))
            elif message.kind == Kind.RESPONSE:
                if message.meta.get("length") != r.received:
                    raise PullError(f"{r.name}: received {r.received} bytes, device says {message.meta.get('length')}")
                r.result = message.meta
            else:
                continue
            del waiting[message.request_id]
            request_next()
            if r.done is not None:
                r.done(r)

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def list_evidence(self) -> list[RemoteItem]:
        items = []
        for raw in self.call("list").get("items", []):
            try:
                item = RemoteItem(str(raw["name"]), int(raw["size"]), str(raw["sha256"]), str(raw["kind"]))
            except (KeyError, TypeError, ValueError):
                raise PullError(f"device listed a malformed item {raw!r}") from None
            items.append(item)
        return items

    def fetch(self, name: str, offset: int, length: int, write: Callable[[bytes], None]) -> int:
        """Fetch ``length`` bytes of ``name`` from ``offset``, in order, into ``write``."""
        r = Range(name, offset, length, write)
        self.fetch_ranges([r])
        if isinstance(r.result, DeviceError):
            raise r.result
        return r.received

    def confirm(self, segment: str, manifest_sha256: str) -> dict[str, Any]:
        return self.call("confirm", segment=segment, manifest_sha256=manifest_sha256)

    def sync_time(self, utc: float | None = None) -> dict[str, Any]:
        return self.call("time", utc=time.time() if utc is None else utc)


@dataclass
class PullSummary:
    device_id: str = ""
    device_key_fingerprint: str = ""
    status: dict[str, Any] = field(default_factory=dict)
    fetched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_fetched: int = 0
    bytes_resumed: int = 0     # already in .part files from an interrupted pull
    verified: list[str] = field(default_factory=list)
    confirmed: list[str] = field(default_factory=list)
    awaiting_store: list[str] = field(default_factory=list)   # verified, not yet held by the evidence store
    problems: list[str] = field(default_factory=list)
    clock_offset_us: int | None = None
    receipt: str = ""          # the receipt this pull wrote (docs/FORMAT.md, "Receipts")
    fetch_seconds: float = 0.0  # the transfer alone, without handshake, verification and confirms
    retransmits: int = 0       # frames this dock sent again
    damaged_frames: int = 0    # frames from the device that failed their CRC (the device resent them)
    repaired_frames: int = 0   # frames from the device with one flipped bit, repaired (no resend)
    seconds: float = 0.0
    part_digests: dict[str, list[str]] = field(default_factory=dict, repr=False)  # name → each 8 MiB part's SHA-256

    @property
    def ok(self) -> bool:
        return not self.problems


def _sha256_file(path: Path, digest: bool = False) -> Any:
    with open(path, "rb") as f:
        h = hashlib.file_digest(f, "sha256")
    return h if digest else h.hexdigest()


class _Download:
    """One file on its way into the archive: appended to ``.NAME.part``, hashed as it comes,
    fsync'd, checked against the listing and renamed into place."""

    def __init__(self, item: RemoteItem, final: Path, summary: PullSummary, progress: Any) -> None:
        self.item, self.final, self.summary, self.progress = item, final, summary, progress
        self.part = final.with_name(f".{final.name}.part")
        offset = self.part.stat().st_size if self.part.exists() else 0
        if offset > item.size:
            self.part.unlink()
            offset = 0
        summary.bytes_resumed += offset
        progress.update(offset)
        self.digest = PartDigest.of_file(self.part) if offset else PartDigest()   # the whole and each part
        self.file: Any = None
        self.ok = False
        self.range = Range(item.name, offset, item.size - offset, self.write, self.finish)

    def write(self, data: bytes) -> None:
        if self.file is None:
            self.file = open(self.part, "ab")
        self.file.write(data)
        self.digest.update(data)
        self.progress.update(len(data))

    def close(self) -> None:
        """Keep what arrived (for a resume), durably."""
        if self.file is not None:
            file, self.file = self.file, None
            try:
                file.flush()
                os.fsync(file.fileno())
            finally:
                file.close()

    def finish(self, r: Range) -> None:
        self.close()
        self.summary.bytes_fetched += r.received
        if isinstance(r.result, DeviceError):
            self.summary.problems.append(f"{self.item.name}: {r.result}")
        elif self.digest.hexdigest() == self.item.sha256:
            if not self.part.exists():
                self.part.touch()
            os.replace(self.part, self.final)
            fsync_dir(self.final.parent)
            self.summary.fetched.append(self.item.name)
            self.summary.part_digests[self.item.name] = self.digest.parts()   # of the bytes just checked
            self.ok = True
        else:
            log.warning("%s: hash mismatch after fetch; the partial copy is discarded", self.item.name)
            self.progress.update(-self.item.size)
            self.part.unlink(missing_ok=True)


def _fetch_items(client: DockClient, items: list[RemoteItem], device_dir: Path, summary: PullSummary,
                 progress: Any) -> set[str]:
    """Fetch every item not already held (resuming .part files); the names held afterwards."""
    held, downloads = set(), []
    for item in items:
        final = device_dir / ("evidence/" + item.name if "/" not in item.name else item.name)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists() and _sha256_file(final) == item.sha256:
            summary.skipped.append(item.name)
            progress.update(item.size)
            held.add(item.name)
        elif final.exists() and item.kind != "audit":
            summary.problems.append(f"{item.name}: the dock's copy differs from the device's; left both untouched")
        else:
            downloads.append(_Download(item, final, summary, progress))
    for attempt in range(2):
        try:
            client.fetch_ranges(d.range for d in downloads)
        finally:
            for d in downloads:
                d.close()
        held.update(d.item.name for d in downloads if d.ok)
        failed = [d for d in downloads if not d.ok and not isinstance(d.range.result, DeviceError)]
        downloads = [_Download(d.item, d.final, summary, progress) for d in failed]   # once more, from 0
    for d in downloads:
        summary.problems.append(f"{d.item.name}: hash never matched the device's listing")
    return held


def _verify_and_confirm(client: DockClient, device_dir: Path, segments: list[str], summary: PullSummary,
                        confirm: bool = True, store_holds: Callable[[Path, str], bool] | None = None,
                        digests: dict[str, str] | None = None) -> None:
    """Verify each segment (and its link to the one before) with the device key; confirm the good
    ones (unless ``confirm`` is False: verified, and the device keeps its copy), and with
    ``store_holds`` only those the evidence store holds."""
    from secure_store.verify import check_chain, verify_segment
    evidence = device_dir / "evidence"
    key, device_id = pulled_device_keys(device_dir, client.session.peer_key), client.session.device_id
    local = sorted(p.name for p in evidence.glob("seg-*.seg")) if evidence.is_dir() else []
    wanted = [n for n in sorted(segments) if n in local]
    if not wanted:
        return
    earlier = [n for n in local if n < wanted[0]]
    checked, bad = [], set()
    for name in earlier[-1:] + wanted:
        seg, problems = verify_segment(evidence / name, key, device_id)
        if seg is not None:
            checked.append(seg)
        for problem in problems:
            bad.add(name)
            summary.problems.append(f"verify: {problem}")
    for problem in check_chain(checked):
        bad.add(problem.file)
        summary.problems.append(f"verify: {problem}")
    for name in wanted:
        if name in bad:
            continue
        summary.verified.append(name)
        if not confirm:
            continue
        if store_holds is not None and not _store_holds(store_holds, device_dir, name, digests or {},
                                                        summary.part_digests):
            summary.awaiting_store.append(name)   # the device keeps its copy until the store holds it
            continue
        digest = hashlib.sha256((evidence / name).with_suffix(".manifest").read_bytes()).hexdigest()
        try:
            client.confirm(name, digest)
            summary.confirmed.append(name)
        except DeviceError as exc:
            summary.problems.append(f"{name}: {exc}")


def _store_holds(store_holds: Callable[..., bool], device_dir: Path, name: str, digests: dict[str, str],
                 parts: dict[str, list[str]]) -> bool:
    """Ask the evidence store; one that takes ``digests`` gets the SHA-256 of each file as the
    fetch verified it against the device's listing, and ``parts`` each 8 MiB part's SHA-256 taken
    in the same pass (``dock.ingest``: no second read, no hashing)."""
    params = inspect.signature(store_holds).parameters
    if "parts" in params:
        return store_holds(device_dir, name, digests=digests, parts=parts)
    if "digests" in params:
        return store_holds(device_dir, name, digests=digests)
    return store_holds(device_dir, name)


def _archive_dir(out: Path) -> Path:
    """The archive directory, made if only its last part is missing: a typo further up is
    refused rather than silently made into a new tree."""
    if out.exists() and not out.is_dir():
        raise PullError(f"archive {out} is not a directory")
    if not out.exists():
        if not out.parent.is_dir():
            raise PullError(f"archive {out}: its parent directory {out.parent} does not exist")
        out.mkdir(exist_ok=True)  # several bays may make it at the same moment
    return out


def pull(port: str, out_dir: str | Path, dock_key: ed25519.Ed25519PrivateKey, *, progress: bool = False,
         confirm: bool = True, sync_time: bool = True, handshake_timeout: float = 10.0,
         trust: DockTrust | None = None, store_holds: Callable[[Path, str], bool] | None = None) -> PullSummary:
    """Pull everything new from the device on ``port`` into ``out_dir``; see the module docstring.

    ``trust``: the agency root, CRLs and this dock's certificate (devices must be certified by
    that root; the dock presents its chain and hands the CRLs on); None pins first-seen keys.
    ``store_holds(device_dir, segment)``: confirm a verified segment only if it returns True
    (the evidence store holds it; ``dock.ingest``).
    """
    trust = trust or DockTrust()
    from tqdm import tqdm
    started = time.monotonic()
    summary = PullSummary()
    out = _archive_dir(Path(out_dir))
    with DockClient.connect(port, dock_key, handshake_timeout=handshake_timeout,
                            cert_chain=trust.cert_chain) as client:
        session = client.session
        if not _DEVICE_ID_RE.fullmatch(session.device_id):
            raise PullError(f"device sent an unusable device ID {session.device_id!r}")
        summary.device_id, summary.device_key_fingerprint = session.device_id, session.peer_fingerprint
        device_dir = out / session.device_id
        try:
            device_cert = trust.admit(device_dir, session, dock_key)
        except AdmissionError as exc:
            raise PullError(str(exc)) from None
        except OSError as exc:
            raise _disk_error(exc, out, session.device_id, summary) from None
        try:
            _deliver_crls(client, trust.crl_pems())
            if sync_time:
                summary.clock_offset_us = client.sync_time().get("offset_us")
            summary.status = client.status()
            items = [i for i in client.list_evidence() if _NAME_RE.fullmatch(i.name)]
            evidence = [i for i in items if i.kind in ("segment", "manifest")]
            total = sum(i.size for i in evidence)
            fetch_started = time.monotonic()
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                      disable=not progress, desc=f"pull {session.device_id}", leave=False) as bar:
                good = _fetch_items(client, evidence, device_dir, summary, bar)
            summary.fetch_seconds = time.monotonic() - fetch_started
            segments = [i.name for i in evidence if i.kind == "segment" and i.name in good
                        and i.name.replace(".seg", ".manifest") in good]
            _verify_and_confirm(client, device_dir, segments, summary, confirm, store_holds,
                                {i.name: i.sha256 for i in evidence if i.name in good})
            # the audit log last: it now holds this session's confirmations too
            audit = [i for i in client.list_evidence() if i.kind == "audit" and _NAME_RE.fullmatch(i.name)]
            _fetch_items(client, audit, device_dir, summary, _NoProgress())
            late = sealed_but_absent(device_dir)  # sealed during this pull: fetched now, confirmed next time
            if late:
                _fetch_items(client, [i for i in client.list_evidence() if i.name in late], device_dir, summary,
                             _NoProgress())
            summary.receipt = str(write_pull_receipt(device_dir, dock_key, session.device_id, session.peer_key,
                                                     device_cert, summary.confirmed))
        except LinkError as exc:
            raise PullError(f"link to {session.device_id} lost: {exc}; rerun to resume") from None
        except OSError as exc:
            raise _disk_error(exc, out, session.device_id, summary) from None
        finally:
            summary.retransmits = client.link.stats["retransmits"]
            summary.damaged_frames = client.link.decoder.bad_payloads  # (bad headers include false magics)
            summary.repaired_frames = client.link.decoder.repaired
            summary.seconds = time.monotonic() - started
    return summary


def _disk_error(exc: OSError, out: Path, device_id: str, summary: PullSummary) -> Exception:
    """A full (or failing) archive disk as one line: what was confirmed, and that the rest was not."""
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS):
        return exc
    what = "is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "cannot be written"
    return PullError(f"archive {out} {what} ({exc.strerror}) while pulling {device_id}: "
                     f"{len(summary.confirmed)} segment(s) confirmed before that; nothing else was confirmed and "
                     f"the device keeps it; free space on the dock and pull again (the pull resumes)")


def _deliver_crls(client: DockClient, crls: list[str]) -> None:
    """Revocation lists reach devices through docks (a device without the ``crl`` command is skipped)."""
    for crl in crls:
        try:
            client.call("crl", crl=crl)
        except DeviceError as exc:
            log.info("device did not take the revocation list: %s", exc)
            return


class _NoProgress:
    def update(self, n: int) -> None:
        pass
