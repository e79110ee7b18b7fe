"""The dock's queue of objects on their way to the evidence store: one JSON file each.

Why files: the queue must survive a restart, a power cut and a SIGKILL of the dock, and an
entry must be on disk before the first byte goes to the store (then a crash at any point
leaves either the entry or the object held). Each entry records the SHA-256 taken when the
dock verified the file, and the multipart upload ID once one is started (written while the
parts go up, durably before the upload is completed), so a retry resumes.
Entries live in ``ARCHIVE/.ingest/queue/``; conflicts are parked in ``ARCHIVE/.ingest/conflicts/``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from secure_store.durable import fsync_dir, write_atomic

from dock.store_config import StoreConfig

log = logging.getLogger(__name__)

QUEUE_DIR = ".ingest/queue"
CONFLICT_DIR = ".ingest/conflicts"
REL_RE = re.compile(r"identity\.json|evidence/seg-\d{1,20}\.(seg|manifest)"
                    r"|(audit|receipts|certs)/[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SNAPSHOT_DIRS = ("audit/", "receipts/")   # files that grow between pulls: each state is its own object


class IngestError(Exception):
    """An object could not be put into the evidence store as it must be."""


@dataclass(frozen=True)
class Upload:
    """One object on its way to the store: what the queue file holds."""

    path: str          # relative to the archive root: <device-id>/<rel>
    key: str
    sha256: str        # hex, taken when queued: the bytes the dock verified
    size: int
    category: str
    upload_id: str = ""

    @property
    def checksum(self) -> str:
        return base64.b64encode(bytes.fromhex(self.sha256)).decode()


def category_of(rel: str) -> str:
    first = rel.split("/", 1)[0]
    return {"identity.json": "identity", "certs": "identity", "evidence": "evidence", "audit": "audit",
            "receipts": "receipt"}[first]


def object_key(config: StoreConfig, device_id: str, rel: str, sha256: str = "", size: int = 0) -> str:
    """The store key of ``rel`` (a path inside the dock's device directory); see the module docstring."""
    if not REL_RE.fullmatch(rel):
        raise IngestError(f"{device_id}/{rel}: not a file the dock puts into the store")
    base = f"{config.prefix}/{config.agency}/{device_id}/{rel}"
    return f"{base}/{size:016d}-{sha256}" if rel.startswith(SNAPSHOT_DIRS) else base


class IngestQueue:
    """``ARCHIVE/.ingest/queue/*.json``: one entry per object not yet held by the store."""

    def __init__(self, archive: Path) -> None:
        self.dir = Path(archive) / QUEUE_DIR
        self.conflict_dir = Path(archive) / CONFLICT_DIR

    def _file(self, key: str) -> Path:
        return self.dir / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")

    def save(self, upload: Upload) -> None:
        """Write (or replace) the entry, durably."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self._file(upload.key), json.dumps(asdict(upload), sort_keys=True).encode())

    def save_all(self, uploads: list[Upload]) -> None:
        """Write several entries, each fsync'd, with one fsync of the directory for them all."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for upload in uploads:
            path = self._file(upload.key)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
            try:
                with open(tmp, "wb") as f:
                    f.write(json.dumps(asdict(upload), sort_keys=True).encode())
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:      # a full disk, say: no torn entry is left behind
                tmp.unlink(missing_ok=True)
                raise
        if uploads:
            fsync_dir(self.dir)

    def holds(self, upload: Upload) -> bool:
        return self._file(upload.key).exists()

    def get(self, key: str) -> Upload | None:
        try:
            return Upload(**json.loads(self._file(key).read_bytes()))
        except (OSError, ValueError, TypeError):
            return None

    def forget(self, upload: Upload) -> None:
        """Drop the entry: the store holds the object (or a newer snapshot replaces it)."""
        path = self._file(upload.key)
        if path.exists():
            path.unlink()
            fsync_dir(path.parent)

    def forget_all(self, uploads: list[Upload]) -> None:
        """Drop several held entries. Not fsync'd: an entry back after a power cut only makes the
        dock ask the store once more (HeadObject: held, same bytes) and drop it again."""
        for upload in uploads:
            self._file(upload.key).unlink(missing_ok=True)

    def park_conflict(self, upload: Upload, copy_key: str) -> None:
        """Move the entry to the conflicts directory, noting where the dock's copy went."""
        self.conflict_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.conflict_dir / self._file(upload.key).name,
                     json.dumps({**asdict(upload), "conflict_copy": copy_key}, sort_keys=True).encode())
        self.forget(upload)

    def pending(self) -> list[Upload]:
        """Every entry, the device identities first, then in key order."""
        found = []
        for path in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []:
            try:
                found.append(Upload(**json.loads(path.read_bytes())))
            except FileNotFoundError:
                continue            # held and dropped by another thread since the listing
            except (ValueError, TypeError) as exc:
                log.error("%s: unreadable ingest queue entry (%s); left for an operator", path, exc)
        return sorted(found, key=lambda u: (u.category != "identity", u.key))
