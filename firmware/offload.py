"""The device end of the dock link: authenticate the dock, then serve its commands.

The firmware daemon builds one ``OffloadServer`` per device and hands it to the state
machine as its ``dock_link``: ``start()`` serves docks in a background thread, session
after session, whenever the port path is present; ``stop()`` ends it. Tests and tools
call ``serve_session()`` to serve exactly one docked session.

Nothing here deletes evidence on its own: ``confirm`` audit-logs the dock's claim and
passes the manifest digest to ``EvidenceStore.release``, which refuses a wrong one.
Commands are a table (``add_command``), so firmware transfer can add its own.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from cryptography.hazmat.primitives.asymmetric import ed25519

from link.transport import Link, LinkError, LinkTimeout, open_port
from link.protocol import Kind, ProtocolError, chunk_header_size, decode_message, encode_message
from link.session import AuthError, Session, device_handshake
from firmware import __version__
from secure_store.audit import Event
from secure_store.durable import write_atomic
from secure_store.errors import ReleaseRefused, StoreError
from secure_store.keys import KeyFileError, load_public_key

log = logging.getLogger(__name__)

FETCH_CHUNK = 65536
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_EARLIEST_UTC, _LATEST_UTC = 1_577_836_800.0, 4_102_444_800.0   # 2020 .. 2100


class CommandError(Exception):
    """A dock request the device refuses; the message goes back to the dock in one line."""

    def __init__(self, message: str, code: str = "refused") -> None:
        super().__init__(message)
        self.code = code


class DeviceClock(Protocol):
    """The device's UTC clock as the evidence store reads it, with the dock's correction."""

    def __call__(self) -> float: ...
    def sync(self, reference_utc: float, source: str) -> tuple[int, int]: ...  # (old, new) offset µs


class OffsetClock:
    """System time plus a durable offset (state/clock.json): a sync never moves the system clock.

    Manifests take the offset when a segment starts, so a sync applies to later segments
    and the change itself is in the audit log, never silent.
    """

    def __init__(self, state_file: Path, base: Callable[[], float] = time.time) -> None:
        self.state_file = Path(state_file)
        self.base = base
        self.offset_us = 0
        self.source = "system"  # what last set this clock; manifests name it (EvidenceStore.clock_source)
        try:
            record = json.loads(self.state_file.read_bytes())
            self.offset_us = int(record["offset_us"])
            self.source = str(record.get("source", "system"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass

    def __call__(self) -> float:
        return self.base() + self.offset_us / 1e6

    def sync(self, reference_utc: float, source: str) -> tuple[int, int]:
        old = self.offset_us
        new = round((reference_utc - self.base()) * 1e6)
        record = {"offset_us": new, "source": source, "reference_utc": reference_utc}
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.state_file, json.dumps(record, sort_keys=True).encode() + b"\n")
        self.offset_us, self.source = new, source
        return old, new


def load_enrolled_docks(directory: Path) -> list[ed25519.Ed25519PublicKey]:
    """The dock keys enrolled under ``DeviceRoot.docks`` (unreadable files are logged, skipped)."""
    docks = []
    for path in sorted(Path(directory).glob("*.pub")):
        try:
            docks.append(load_public_key(path, "dock"))
        except KeyFileError as exc:
            log.warning("ignoring enrolled dock key: %s", exc)
    return docks


@dataclass
class Request:
    """One dock command as a handler sees it."""

    command: str
    args: dict[str, Any]
    blob: bytes
    request_id: int
    session: Session
    server: "OffloadServer"

    def send_chunk(self, offset: int, data: bytes) -> None:
        """Stream part of the answer (fetch) ahead of the final response."""
        self.server._link.send(encode_message(Kind.CHUNK, self.request_id, {"offset": offset}, data))


Handler = Callable[[Request], dict[str, Any] | None]


@dataclass
class SessionReport:
    dock: str = ""
    commands: collections.Counter = field(default_factory=collections.Counter)
    bytes_sent: int = 0
    released: list[str] = field(default_factory=list)
    retransmits: int = 0
    ended: str = ""


class OffloadServer:
    """Serve docks on ``port`` (a tty path or pyserial URL); see the module docstring."""

    def __init__(
        self,
        port: str,
        store: Any,
        audit: Any,
        device_key: ed25519.Ed25519PrivateKey,
        device_id: str,
        enrolled_docks: Iterable[ed25519.Ed25519PublicKey] | Callable[[], Iterable[ed25519.Ed25519PublicKey]],
        status_provider: Callable[[], dict[str, Any]] | None = None,
        clock: DeviceClock | None = None,
        *,
        firmware_version: str = __version__,
        on_clock_set: Callable[[int], None] | None = None,
        idle_timeout: float = 15.0,
        handshake_timeout: float = 10.0,
        window: int = 128,
        trust: Any = None,
    ) -> None:
        self.port, self.store, self.audit = port, store, audit
        self.device_key, self.device_id = device_key, device_id
        self._enrolled = enrolled_docks
        self.status_provider = status_provider or dict
        self.clock = clock
        self.firmware_version = firmware_version
        self.on_clock_set = on_clock_set
        self.idle_timeout, self.window = idle_timeout, window
        self.handshake_timeout = handshake_timeout
        self.commands: dict[str, Handler] = {
            "status": self._status, "list": self._list, "fetch": self._fetch,
            "confirm": self._confirm, "time": self._time,
        }
        self.trust = trust  # secure_store.admission.DeviceTrustAnchor: admits docks of our agency, takes CRLs
        if trust is not None:
            self.commands["crl"] = self._crl
        self._link: Link | None = None
        self._listed: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add_command(self, name: str, handler: Handler) -> None:
        """Extend the protocol (e.g. firmware transfer): ``handler(request) -> response meta``."""
        self.commands[name] = handler

    # --- running ----------------------------------------------------------------------------

    def start(self) -> None:
        """Serve docks in a background thread until ``stop()`` (the state machine's DockLink)."""
        if self._thread and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self.serve_forever, name="offload-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        link = self._link
        if link is not None:
            link.close(flush_timeout=0.5)
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def serve_forever(self) -> None:
        """Session after session while the port is present; survives unplugging."""
        while not self._stop.is_set():
            if "://" not in self.port and not os.path.exists(self.port):
                self._stop.wait(0.5)
                continue
            try:
                self.serve_session(wait=1.0)
            except LinkError as exc:
                log.debug("dock session ended: %s", exc)
                self._stop.wait(0.2)

    def serve_session(self, wait: float | None = None) -> SessionReport | None:
        """Serve one dock: None if no dock said hello within ``wait`` seconds (None: forever).

        Returns when the dock closes the session, the cable is pulled or the dock goes silent;
        raises LinkError if the port cannot be opened, AuthError if the dock is refused.
        """
        link = Link(open_port(self.port), window=self.window, idle_timeout=self.idle_timeout)
        self._link = link
        report = SessionReport()
        try:
            docks = self._enrolled() if callable(self._enrolled) else self._enrolled
            try:
                session = device_handshake(link, self.device_key, self.device_id, docks,
                                           firmware_version=self.firmware_version, wait=wait,
                                           timeout=self.handshake_timeout,
                                           cert_chain=self.trust.chain_pem if self.trust else "",
                                           dock_trust=self.trust.admit_dock if self.trust else None)
            except AuthError as exc:
                self.audit.append(Event.DOCK_AUTH_FAILED, reason=str(exc))
                raise
            except LinkError:
                if self._stop.is_set() or not link.handshake_frames.empty():
                    raise
                return None
            report.dock = session.peer_fingerprint
            self.audit.append(Event.OFFLOAD_START, dock=session.peer_fingerprint, protocol=session.version)
            self._listed = {}
            try:
                self._serve(link, session, report)
            except LinkError as exc:
                report.ended = str(exc)
            report.retransmits = link.stats["retransmits"]
            self.audit.append("offload_end", dock=session.peer_fingerprint, bytes_sent=report.bytes_sent,
                              released=len(report.released), ended=report.ended or "closed by dock",
                              retransmits=report.retransmits)
            return report
        finally:
            self._link = None
            link.close(flush_timeout=1.0)

    def _serve(self, link: Link, session: Session, report: SessionReport) -> None:
        while not self._stop.is_set():
            try:
                message = decode_message(link.recv(timeout=1.0))
            except ProtocolError as exc:
                link.send(encode_message(Kind.ERROR, 0, {"error": str(exc), "code": "protocol"}))
                continue
            except LinkTimeout:
                if link.error is None:
                    continue  # recv's own timeout; the link's idle timeout ends silent docks
                raise
            if message.kind != Kind.REQUEST:
                continue
            command = str(message.meta.get("cmd", ""))
            handler = self.commands.get(command)
            request = Request(command, message.meta, message.blob, message.request_id, session, self)
            report.commands[command] += 1
            try:
                if handler is None:
                    raise CommandError(f"unknown command {command!r}", "unknown")
                reply = handler(request) or {}
            except CommandError as exc:
                link.send(encode_message(Kind.ERROR, message.request_id, {"error": str(exc), "code": exc.code}))
                continue
            except (StoreError, OSError, ValueError, TypeError, KeyError) as exc:
                log.warning("dock command %s failed: %s", command, exc)
                link.send(encode_message(Kind.ERROR, message.request_id, {"error": str(exc), "code": "failed"}))
                continue
            if command == "fetch":
                report.bytes_sent += int(reply.get("length", 0))
            if command == "confirm":
                report.released.append(str(message.meta.get("segment")))
            link.send(encode_message(Kind.RESPONSE, message.request_id, reply))

    # --- commands ---------------------------------------------------------------------------

    def _status(self, request: Request) -> dict[str, Any]:
        storage = self.store.storage_status()
        now = self.clock() if self.clock else time.time()
        status = {
            "device_id": self.device_id,
            "firmware_version": self.firmware_version,
            "protocol_version": request.session.version,
            "storage": {"free_bytes": storage.free_bytes, "used_bytes": storage.used_bytes, "level": storage.level},
            "clock": {"utc": now, "offset_us": getattr(self.clock, "offset_us", None)},
            "battery_percent": None,
            "recording_state": None,
        }
        status.update(self.status_provider())
        return status

    def _list(self, request: Request) -> dict[str, Any]:
        items = self.store.list_evidence()
        self._listed = {item.name: item for item in items}
        return {"items": [{"name": i.name, "size": i.size, "sha256": i.sha256, "kind": i.kind} for i in items]}

    def _fetch(self, request: Request) -> dict[str, Any]:
        name, offset, length = request.args.get("name"), request.args.get("offset"), request.args.get("length")
        if not isinstance(name, str) or name not in self._listed:
            raise CommandError(f"{name!r} is not in this session's evidence list", "unknown_name")
        if not isinstance(offset, int) or not isinstance(length, int) or offset < 0 or length < 0:
            raise CommandError("fetch needs integer offset >= 0 and length >= 0", "bad_range")
        size = self._listed[name].size
        end = min(offset + length, size)   # the listed size: a growing audit log still hashes as listed
        # one CHUNK message per full-size frame: a 64 KiB blob plus its header would take a
        # second, tiny frame (its own tag, CRC, ACK and wake-up) for every 64 KiB
        step = max(1024, min(FETCH_CHUNK, request.session.max_payload - chunk_header_size(end, request.request_id)))
        sent = 0
        with open(self.store.evidence_path(name), "rb") as f:
            f.seek(offset)
            position = offset
            while position < end:
                data = f.read(min(step, end - position))
                if not data:
                    raise CommandError(f"{name} is shorter than listed", "changed")
                request.send_chunk(position, data)
                position += len(data)
                sent += len(data)
        return {"name": name, "offset": offset, "length": sent, "size": size}

    def _confirm(self, request: Request) -> dict[str, Any]:
        segment, digest = request.args.get("segment"), request.args.get("manifest_sha256")
        if not isinstance(segment, str) or not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
            raise CommandError("confirm needs a segment name and a hex SHA-256 manifest digest", "bad_confirm")
        self.audit.append(Event.OFFLOAD_CONFIRM, segment=segment, manifest_sha256=digest,
                          dock=request.session.peer_fingerprint)
        try:
            self.store.release(segment, bytes.fromhex(digest))
        except ReleaseRefused as exc:
            raise CommandError(str(exc), "release_refused") from None
        return {"segment": segment, "released": True}

    def _crl(self, request: Request) -> dict[str, Any]:
        """A revocation list of our agency, handed on by the dock (docs/PROTOCOL.md)."""
        from secure_store.admission import AdmissionError
        crl = request.args.get("crl")
        if not isinstance(crl, str) or len(crl) > 1 << 20:
            raise CommandError("crl needs a PEM revocation list", "bad_crl")
        try:
            name = self.trust.install_crl(crl.encode())
        except AdmissionError as exc:
            raise CommandError(str(exc), "bad_crl") from None
        self.audit.append(Event.CRL_INSTALLED, file=name, dock=request.session.peer_fingerprint)
        return {"installed": name}

    def _time(self, request: Request) -> dict[str, Any]:
        reference = request.args.get("utc")
        if (not isinstance(reference, (int, float)) or not math.isfinite(reference)
                or not _EARLIEST_UTC <= reference <= _LATEST_UTC):
            raise CommandError("time sync needs a plausible UTC (seconds since 1970)", "bad_time")
        if self.clock is None or not hasattr(self.clock, "sync"):
            raise CommandError("this device has no settable clock", "unsupported")
        device_before = self.clock()
        old, new = self.clock.sync(float(reference), f"dock:{request.session.peer_fingerprint[:16]}")
        self.audit.append(Event.CLOCK_SYNC, dock=request.session.peer_fingerprint, reference_utc=reference,
                          device_utc=device_before, old_offset_us=old, offset_us=new)
        if self.on_clock_set is not None:
            self.on_clock_set(new)
        return {"old_offset_us": old, "offset_us": new}

