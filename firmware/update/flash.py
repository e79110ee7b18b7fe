"""Firmware over the dock link: three commands added to the device's ``OffloadServer``.

The dock is only the carrier; the device trusts nothing it sends until ``install_image``
has checked the vendor signature. docs/FIRMWARE.md §5 specifies::

    fw_begin   {size, sha256}          → {"upload": size}     refused while recording, if too big or no room
    fw_data    {offset} + blob         → {"received": n}      offsets must follow on exactly
    fw_install {}                      → {slot, version, previous_slot, previous_version, files, bytes}

The upload goes to ``ROOT/firmware/upload.img.part`` (never into evidence), is checked
against the announced SHA-256, installed like ``bodycam firmware install``, and removed.
Device side: ``attach_firmware_commands(server, root)``; dock side: ``flash(port, dock_key, image)``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from cryptography.hazmat.primitives.asymmetric import ed25519

from firmware.update import image as fwimage
from firmware.update.image import ImageError
from firmware.offload import CommandError
from firmware.update.slots import UPLOAD_NAME, UpdateError
from firmware.update.install import install_image, is_recording
from secure_store.layout import DeviceRoot

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = fwimage.HEADER.size + fwimage.MAX_MANIFEST_BYTES + fwimage.HYBRID_SIGNATURE_BLOCK + fwimage.MAX_TOTAL_BYTES
DATA_BLOCK = 256 * 1024  # bytes per fw_data request: few round trips, bounded memory
FIRMWARE_UPLOAD = "firmware_upload"  # audit event: a dock started sending an image
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


class FlashError(UpdateError):
    """Flashing through a dock failed; the message says where (link, device refusal)."""


class FirmwareReceiver:
    """The device's end of a firmware transfer: one upload at a time, checked, then installed."""

    def __init__(self, root: str | Path | DeviceRoot, *, recording: Callable[[], bool] | None = None,
                 begin_update: Callable[[], None] | None = None, end_update: Callable[[bool], None] | None = None,
                 max_image_bytes: int = MAX_IMAGE_BYTES) -> None:
        self.root = root if isinstance(root, DeviceRoot) else DeviceRoot(root)
        self.recording = recording or (lambda: is_recording(self.root))
        self.begin_update, self.end_update = begin_update, end_update  # e.g. the state machine's
        self.max_image_bytes = max_image_bytes
        self._lock = threading.Lock()
        self._file: Any = None
        self._size = self._received = 0
        self._sha256 = ""
        self._digest: Any = None

    @property
    def upload_path(self) -> Path:
        return self.root.firmware / UPLOAD_NAME

    def attach(self, server: Any) -> None:
        """Add fw_begin / fw_data / fw_install to an ``OffloadServer``."""
        server.add_command("fw_begin", self.begin)
        server.add_command("fw_data", self.data)
        server.add_command("fw_install", self.install)

    def _discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.upload_path.unlink(missing_ok=True)

    def begin(self, request: Any) -> dict[str, Any]:
        size, digest = request.args.get("size"), request.args.get("sha256")
        if type(size) is not int or not 0 < size <= self.max_image_bytes:
            raise CommandError(f"firmware size must be 1..{self.max_image_bytes} bytes", "bad_size")
        if not isinstance(digest, str) or not _SHA256_RE.fullmatch(digest):
            raise CommandError("fw_begin needs the image's hex SHA-256", "bad_digest")
        if self.recording():
            raise CommandError("device is recording; firmware update refused", "recording")
        with self._lock:
            self._discard()
            self.root.firmware.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(self.root.firmware).free
            if free < 3 * size:  # upload + staging + slot, with the old slot kept
                raise CommandError(f"no room for a {size}-byte image ({free} bytes free)", "no_space")
            self._file = open(self.upload_path, "wb")
            self._size, self._received, self._sha256 = size, 0, digest
            self._digest = hashlib.sha256()
        request.server.audit.append(FIRMWARE_UPLOAD, dock=request.session.peer_fingerprint, size=size, sha256=digest)
        log.info("receiving a %d-byte firmware image from dock %s", size, request.session.peer_fingerprint[:16])
        return {"upload": size}

    def data(self, request: Any) -> dict[str, Any]:
        offset, blob = request.args.get("offset"), request.blob
        with self._lock:
            if self._file is None:
                raise CommandError("no firmware upload in progress (fw_begin first)", "no_upload")
            if offset != self._received:
                raise CommandError(f"firmware data at {offset!r}, expected {self._received}", "bad_offset")
            if self._received + len(blob) > self._size:
                self._discard()
                raise CommandError(f"firmware data runs past the announced {self._size} bytes", "too_long")
            self._file.write(blob)
            self._digest.update(blob)
            self._received += len(blob)
            return {"received": self._received}

    def install(self, request: Any) -> dict[str, Any]:
        with self._lock:
            if self._file is None:
                raise CommandError("no firmware upload in progress (fw_begin first)", "no_upload")
            try:
                if self._received != self._size:
                    raise CommandError(f"firmware upload incomplete: {self._received} of {self._size} bytes",
                                       "incomplete")
                if self._digest.hexdigest() != self._sha256:
                    raise CommandError("firmware upload does not match its announced SHA-256", "corrupted")
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                self._file = None
                result = self._install(request)
            finally:
                self._discard()
        return {"slot": result.slot, "version": result.version, "previous_slot": result.previous_slot,
                "previous_version": result.previous_version, "files": result.files, "bytes": result.bytes}


    def _install(self, request: Any) -> Any:
        if self.begin_update is not None:
            try:
                self.begin_update()
            except Exception as exc:  # noqa: BLE001 - the daemon's refusal goes back to the dock
                raise CommandError(str(exc), "refused") from None
        ok = False
        try:
            result = install_image(self.upload_path, self.root, audit=request.server.audit, recording=self.recording)
            ok = True
            return result
        except (ImageError, UpdateError) as exc:
            raise CommandError(str(exc), "refused") from None
        finally:
            if self.end_update is not None:
                self.end_update(ok)


def attach_firmware_commands(server: Any, root: str | Path | DeviceRoot, *,
                             recording: Callable[[], bool] | None = None,
                             begin_update: Callable[[], None] | None = None,
                             end_update: Callable[[bool], None] | None = None) -> FirmwareReceiver:
    """What the device daemon calls once on its ``OffloadServer``.

    ``begin_update`` (may raise to refuse, e.g. ``StateMachine.begin_update``) and
    ``end_update(ok)`` bracket the install, so the device shows UPDATING meanwhile.
    """
    receiver = FirmwareReceiver(root, recording=recording, begin_update=begin_update, end_update=end_update)
    receiver.attach(server)
    return receiver


def flash(port: str, dock_key: ed25519.Ed25519PrivateKey, image_path: str | Path, *, progress: bool = False,
          handshake_timeout: float = 10.0, install_timeout: float = 300.0) -> dict[str, Any]:
    """Send IMAGE to the device on ``port`` over the authenticated dock link and install it there."""
    from tqdm import tqdm

    from dock.client import DeviceError, DockClient
    from link.transport import MAX_MESSAGE, LinkError

    image_path = Path(image_path)
    try:
        size = image_path.stat().st_size
        with open(image_path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256")
    except OSError as exc:
        raise FlashError(f"cannot read image {image_path}: {exc.strerror}") from None
    try:
        with DockClient.connect(port, dock_key, handshake_timeout=handshake_timeout) as client:
            device = client.session.device_id
            client.call("fw_begin", size=size, sha256=digest.hexdigest())
            step = min(DATA_BLOCK, MAX_MESSAGE - 4096)  # the link cuts it into frames; room for the meta
            with open(image_path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024,
                                                   file=sys.stderr, disable=not progress,
                                                   desc=f"flash {device}", leave=False) as bar:
                offset = 0
                while block := f.read(step):
                    client.call("fw_data", blob=block, offset=offset)
                    offset += len(block)
                    bar.update(len(block))
            if offset != size:
                raise FlashError(f"{image_path} changed while it was being sent")
            client.timeout = install_timeout
            reply = client.call("fw_install")
            reply["device_id"] = device
            return reply
    except DeviceError as exc:
        raise FlashError(str(exc)) from None
    except LinkError as exc:
        raise FlashError(f"dock link: {exc}") from None
