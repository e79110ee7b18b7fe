"""Dock → evidence store: every verified object into an S3 Object Lock bucket, create-only.

Why: a camera may free its copy only once the force's WORM store holds the segment, with
retention in force and the stored checksum equal to what the dock verified. So ``Ingestor``

* writes each object create-only (``If-None-Match: *``) with its SHA-256 checksum (the
  server refuses other bytes) and COMPLIANCE retention from the per-category policy; large
  files go up in parts, several at once, resumable (the upload ID is kept in the queue);
* then reads it back (HeadObject: size, checksum, lock mode and date; GetObjectRetention where
  HeadObject leaves the lock out) before it says "held";
* keeps a durable queue (``ARCHIVE/.ingest/queue/*.json``): whatever the store did not
  take (unreachable, dock killed) is uploaded later, after a restart too;
* never overwrites: an object already there with other bytes is a conflict; the dock's
  copy then goes to a ``conflicts/`` key beside it, so both copies' evidence is kept.

Nothing here deletes anything, nor aborts an upload: a bucket lifecycle rule reclaims
abandoned multipart uploads (docs/STORE.md).

Key layout (no personal data: agency code, device ID, file names made on the device)::

    v1/<agency>/<device-id>/identity.json
    v1/<agency>/<device-id>/evidence/seg-0000000001.seg | .manifest
    v1/<agency>/<device-id>/audit/audit-0001.log/<size:016d>-<sha256>   (each snapshot kept)
    v1/<agency>/<device-id>/receipts/<name>
    v1/<agency>/<device-id>/conflicts/<path>/<sha256>
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Mapping

from dock.ingest_parts import PART_SIZE, composite, hash_file, send_parts
from dock.ingest_errors import ObjectConflict, StoreRefused, StoreUnreachable, client_error
from dock.ingest_queue import REL_RE, IngestError, IngestQueue, Upload, category_of, object_key
from dock.store_config import StoreConfig

log = logging.getLogger(__name__)

class Ingestor:
    """Puts a dock archive's verified files into one Object Lock bucket; see the module docstring."""

    def __init__(self, config: StoreConfig, archive: str | Path, client: Any = None) -> None:
        self.config, self.archive = config, Path(archive)
        self.client = client if client is not None else config.client()
        self.queue = IngestQueue(self.archive)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self.conflicts: list[str] = []
        self.retry_after = 30.0       # after an outage, bays only queue for this long (the worker retries)
        self._skip_until = 0.0
        self._known: set[tuple[str, str]] = set()   # (key, sha256) seen held by this process
        self._composites: dict[str, str] = {}        # sha256 → composite checksum of our parts
        self._fresh: set[str] = set()                # keys queued anew by this process, not yet tried
        self._part_sums: dict[str, list[str]] = {}   # sha256 → each part's SHA-256, taken in the same pass
        self._objects = ThreadPoolExecutor(max(2, config.max_concurrency), thread_name_prefix="ingest-object")
        self._saves = ThreadPoolExecutor(1, thread_name_prefix="ingest-queue")   # never waits on the others

    # -- the bucket ------------------------------------------------------------------

    def check_bucket(self) -> None:
        """Refuse (one line) a bucket that is missing, not ours, or without Object Lock."""
        from botocore.exceptions import BotoCoreError, ClientError
        bucket = self.config.bucket
        try:
            self.client.head_bucket(Bucket=bucket)
            lock = self.client.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
        except ClientError as exc:
            code, op = str(exc.response.get("Error", {}).get("Code", "")), exc.operation_name
            if code in ("404", "NoSuchBucket") and op == "HeadBucket":
                raise StoreRefused(f"bucket {bucket} does not exist at the store") from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") and op == "HeadBucket":
                raise StoreRefused(f"store refused the dock's credentials for bucket {bucket} ({code})") from None
            if code in ("ObjectLockConfigurationNotFoundError", "404"):
                raise StoreRefused(f"bucket {bucket} has no Object Lock; refusing to ingest evidence "
                                   f"into a bucket that allows deletion") from None
            raise client_error(exc, f"bucket {bucket}") from None
        except BotoCoreError as exc:
            raise client_error(exc, f"bucket {bucket}") from None
        if lock.get("ObjectLockEnabled") != "Enabled":
            raise StoreRefused(f"bucket {bucket} has no Object Lock; refusing to ingest")

    def pending(self) -> list[Upload]:
        """Everything queued and not yet held by the store."""
        return self.queue.pending()

    def enqueue(self, device_dir: Path, rel: str) -> Upload:
        """Queue ``rel`` of ``device_dir`` (durably, before any upload) with its SHA-256 now."""
        upload, new = self._prepare(device_dir, rel)
        if new:
            self.queue.save(upload)
        return upload

    def _prepare(self, device_dir: Path, rel: str, digest: str | None = None,
                 parts: list[str] | None = None) -> tuple[Upload, bool]:
        """The queue entry of ``rel`` with its SHA-256 (``digest`` if the dock took it already, as
        it fetched and checked the file, with ``parts``: each 8 MiB part's SHA-256 from the same
        pass; else taken now), and whether it must be written (not if the queue has it already,
        nor if this process saw the store hold these bytes)."""
        path = device_dir / rel
        digest, size = (digest, path.stat().st_size) if digest else self._hash(path)
        if parts and self.config.part_size == PART_SIZE and len(parts) == -(-size // PART_SIZE) \
                and size >= self.config.multipart_threshold:
            self._part_sums[digest] = parts      # each part goes up with these: the store refuses other bytes
        device_id = device_dir.name
        upload = Upload(f"{device_id}/{rel}", object_key(self.config, device_id, rel, digest, size), digest, size,
                        category_of(rel))
        if (upload.key, digest) in self._known:
            self._part_sums.pop(digest, None)
            return upload, False
        old = self.queue.get(upload.key)
        if old is not None and old.sha256 == digest:
            return old, False            # keep its multipart upload ID
        return upload, True

    def _hash(self, path: Path) -> tuple[str, int]:
        """(SHA-256, size) of a file; for one that goes up in parts, each part's SHA-256 in the
        same pass (the parts are then sent with these: the store refuses bytes that differ)."""
        digest, size, parts = hash_file(path, self.config.part_size)
        if size >= self.config.multipart_threshold:
            self._part_sums[digest] = parts
        return digest, size

    # -- one object ------------------------------------------------------------------

    def _lock(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def ingest(self, upload: Upload, forget: bool = True) -> bool:
        """Make the store hold ``upload`` under retention, checked; then drop it from the queue
        (``forget=False``: the caller drops it; True is returned if it is to be dropped).

        StoreUnreachable: left queued. ObjectConflict: moved to the conflicts list, never retried.
        """
        with self._lock(upload.key):
            if not self.queue.holds(upload):
                return False             # another bay or the background worker finished it
            if (upload.key, upload.sha256) in self._known:
                return self._done(upload, forget)
            if upload.path.split("/", 2)[1] in ("audit", "receipts") and not self._unchanged(upload):
                return self._done(upload, forget)   # the log grew since: its newer snapshot is queued instead
            try:
                # a small object goes straight up (create-only: a 412 means "there already"), and so does
                # a large one queued just now by this process; a retry of a large one (an entry found in
                # the queue) is looked for first, so that it never sends megabytes the store already holds
                fresh = upload.key in self._fresh
                self._fresh.discard(upload.key)
                if upload.size < self.config.multipart_threshold or fresh or not self._held(upload):
                    self._upload(upload)
                    if not self._held(upload):
                        raise IngestError(f"{upload.key}: not found after upload")
            except ObjectConflict:
                self._keep_conflict(upload)
                raise
            self._known.add((upload.key, upload.sha256))
            self._skip_until = 0.0
            log.info("store holds %s (%d bytes, retention in force)", upload.key, upload.size)
            return self._done(upload, forget)

    def _done(self, upload: Upload, forget: bool) -> bool:
        if forget:
            self.queue.forget(upload)
        return True

    def _unchanged(self, upload: Upload) -> bool:
        path = self.archive / upload.path
        if not path.exists() or path.stat().st_size != upload.size:
            return False
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest() == upload.sha256

    def _retain_until(self, category: str) -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=self.config.retention_for(category))

    def _upload(self, upload: Upload, key: str | None = None) -> None:
        from botocore.exceptions import BotoCoreError, ClientError
        key = key or upload.key
        try:
            if upload.size >= self.config.multipart_threshold:
                self._multipart(upload, key)
            else:
                with open(self.archive / upload.path, "rb") as body:
                    self.client.put_object(Bucket=self.config.bucket, Key=key, Body=body, ContentLength=upload.size,
                                           ChecksumSHA256=upload.checksum, IfNoneMatch="*",
                                           ObjectLockMode="COMPLIANCE",
                                           ObjectLockRetainUntilDate=self._retain_until(upload.category))
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return       # someone (an earlier run of ours?) wrote it first: _held() judges the bytes
            if code in ("BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest"):
                raise IngestError(f"{upload.path}: changed on the dock's disk since it was verified; "
                                  f"not uploaded") from None
            raise client_error(exc, key) from None
        except BotoCoreError as exc:
            raise client_error(exc, key) from None

    def _multipart(self, upload: Upload, key: str) -> None:
        """Upload in parts, several at once; parts already at the store (same MD5 ETag) are kept."""
        from botocore.exceptions import ClientError
        bucket, size = self.config.bucket, self.config.part_size
        done: dict[int, dict] = {}
        saving = None
        if upload.upload_id and key == upload.key:
            try:
                for page in self.client.get_paginator("list_parts").paginate(
                        Bucket=bucket, Key=key, UploadId=upload.upload_id):
                    done.update({p["PartNumber"]: p for p in page.get("Parts", [])})
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code", "")) not in ("NoSuchUpload", "404"):
                    raise
                upload = replace(upload, upload_id="")
        if not upload.upload_id or key != upload.key:
            upload_id = self.client.create_multipart_upload(
                Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256", ObjectLockMode="COMPLIANCE",
                ObjectLockRetainUntilDate=self._retain_until(upload.category))["UploadId"]
            if key == upload.key:
                upload = replace(upload, upload_id=upload_id)
                # made durable while the parts go up, and before completing: a crash once it is on disk
                # resumes this upload; one before is a fresh start, as a crash before creating it
                saving = self._saves.submit(self.queue.save, upload)
        else:
            upload_id = upload.upload_id
        try:
            parts, read, resumed = send_parts(self.client, bucket, key, upload_id, self.archive / upload.path,
                                              upload.size, size, self.config.max_concurrency, done,
                                              self._part_sums.pop(upload.sha256, None))
        finally:
            if saving is not None:
                saving.result()
        if read is not None and read != upload.sha256:   # parts hashed as read: the whole must be what was verified
            raise IngestError(f"{upload.path}: changed on the dock's disk since it was verified; not completed")
        self._composites[upload.sha256] = composite([p["ChecksumSHA256"] for p in parts])   # what the store reports
        if resumed:
            log.info("%s: resumed multipart upload, %d of %d parts already at the store", key, resumed, len(parts))
        self.client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                              MultipartUpload={"Parts": parts}, IfNoneMatch="*")

    def _expected_checksums(self, upload: Upload) -> set[str]:
        """The checksum the store reports for our bytes: whole-object, or composite of our parts."""
        expected = {upload.checksum}
        if upload.sha256 in self._composites:
            expected.add(self._composites[upload.sha256])
        elif upload.size >= self.config.multipart_threshold:
            expected.add(composite(hash_file(self.archive / upload.path, self.config.part_size)[2]))
        return expected

    def _held(self, upload: Upload, key: str | None = None) -> bool:
        """True if the store holds exactly our bytes under COMPLIANCE retention still in force.

        False if the key is absent; ObjectConflict if it holds other bytes.
        """
        from botocore.exceptions import BotoCoreError, ClientError
        key, bucket = key or upload.key, self.config.bucket
        try:
            head = self.client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise client_error(exc, key) from None
        except BotoCoreError as exc:
            raise client_error(exc, key) from None
        stored = head.get("ChecksumSHA256")
        if head.get("ContentLength") != upload.size or stored not in self._expected_checksums(upload):
            if head.get("ContentLength") != upload.size or not self._same_bytes(upload, key):
                raise ObjectConflict(f"{key}: the store already holds other bytes (stored checksum {stored}, "
                                     f"{head.get('ContentLength')} bytes; the dock verified sha256 {upload.sha256}, "
                                     f"{upload.size} bytes); never overwritten")
        retention = {"Mode": head.get("ObjectLockMode"), "RetainUntilDate": head.get("ObjectLockRetainUntilDate")}
        if retention["Mode"] is None:   # a store (or a policy) that leaves the lock out of HeadObject
            try:
                retention = self.client.get_object_retention(Bucket=bucket, Key=key)["Retention"]
            except (ClientError, BotoCoreError) as exc:
                raise client_error(exc, f"{key} retention") from None
        until = retention.get("RetainUntilDate")
        if retention.get("Mode") != "COMPLIANCE" or until is None or until <= dt.datetime.now(dt.timezone.utc):
            raise IngestError(f"{key}: stored without COMPLIANCE retention in force ({retention}); "
                              f"the bucket's default retention or the store is wrong")
        return True

    def _same_bytes(self, upload: Upload, key: str) -> bool:
        """Read the stored object back and hash it (a checksum from other part sizes says nothing)."""
        body = self.client.get_object(Bucket=self.config.bucket, Key=key)["Body"]
        digest = hashlib.sha256()
        for block in body.iter_chunks(1 << 20):
            digest.update(block)
        return digest.hexdigest() == upload.sha256

    def _keep_conflict(self, upload: Upload) -> None:
        """Keep the dock's copy at a conflicts/ key (locked too) and park the queue entry."""
        device_id, rel = upload.path.split("/", 1)
        key = f"{self.config.prefix}/{self.config.agency}/{device_id}/conflicts/{rel}/{upload.sha256}"
        try:
            if not self._held(upload, key):
                self._upload(replace(upload, upload_id=""), key)
        except IngestError as exc:
            log.error("%s: could not keep the dock's copy at %s: %s", upload.path, key, exc)
        self.queue.park_conflict(upload, key)
        self.conflicts.append(upload.key)
        log.error("CONFLICT %s: the store holds other bytes; the dock's copy is kept locally and at %s",
                  upload.key, key)

    # -- what the dock calls -----------------------------------------------------------

    def queue_segment(self, device_dir: Path, segment: str, digests: Mapping[str, str] | None = None,
                      parts: Mapping[str, list[str]] | None = None) -> list[Upload]:
        """Queue a verified segment, its manifest and the device identity (durably, no upload:
        every entry fsync'd, one directory fsync for them all). ``digests``: file name → SHA-256
        the dock took as it fetched the file (those not given are hashed now); ``parts``: file
        name → each 8 MiB part's SHA-256 from that same pass."""
        rels = ["identity.json"] if (device_dir / "identity.json").exists() else []
        rels += [f"evidence/{segment}", f"evidence/{Path(segment).with_suffix('.manifest')}"]
        digests, parts = digests or {}, parts or {}
        names = [rel.rsplit("/", 1)[-1] if rel != "identity.json" else "" for rel in rels]
        prepared = [self._prepare(device_dir, rel, digests.get(name), parts.get(name) if name in digests else None)
                    for rel, name in zip(rels, names)]
        self.queue.save_all([upload for upload, new in prepared if new])
        self._fresh.update(upload.key for upload, new in prepared if new)
        return [upload for upload, _ in prepared]

    def ingest_together(self, uploads: list[Upload]) -> None:
        """Ingest several objects at once: the largest here, the others (a manifest, the identity)
        on other threads meanwhile; the entries of those held are dropped with one directory fsync.
        Raises the first StoreUnreachable, else the first other IngestError."""
        if not uploads:
            return
        big, *rest = sorted(uploads, key=lambda u: -u.size)
        futures = [self._objects.submit(self.ingest, u, False) for u in rest]
        held, errors = [], []
        for upload, outcome in [(big, None), *zip(rest, futures)]:
            try:
                if (self.ingest(upload, False) if outcome is None else outcome.result()):
                    held.append(upload)
            except IngestError as exc:
                errors.append(exc)
        self.queue.forget_all(held)
        if errors:
            raise next((e for e in errors if isinstance(e, StoreUnreachable)), errors[0])

    def segment_held(self, device_dir: Path, segment: str, digests: Mapping[str, str] | None = None,
                     parts: Mapping[str, list[str]] | None = None) -> bool:
        """Queue a verified segment and try to put it into the store now; True only once the
        store holds it, its manifest and the device identity as it must (then confirm).

        ``digests``: file name → SHA-256 as the dock fetched and checked it, ``parts``: each
        8 MiB part's SHA-256 from the same pass (``dock.client`` hands both on), so nothing is
        hashed here: the store checks a single PUT against the digest and each part against its
        SHA-256 (without ``parts``, the parts are hashed as read and the whole checked before
        completing).
        """
        try:
            uploads = self.queue_segment(device_dir, segment, digests, parts)
        except OSError as exc:
            log.error("%s: cannot queue for the store (%s); not confirmed", segment, exc.strerror)
            return False
        if time.monotonic() < self._skip_until:
            return False         # the store was just unreachable: queue only, do not keep the bay waiting
        try:
            self.ingest_together(uploads)
        except StoreUnreachable as exc:
            self._skip_until = time.monotonic() + self.retry_after
            log.warning("%s: %s; queued, the device keeps its copy", segment, exc)
            return False
        except IngestError as exc:
            log.error("%s: %s; the device keeps its copy", segment, exc)
            return False
        return True

    def enqueue_device(self, device_dir: Path) -> list[Upload]:
        """Queue the device's identity, audit log files and receipts (after each pull)."""
        rels = ["identity.json"] if (device_dir / "identity.json").exists() else []
        for sub in ("certs", "audit", "receipts"):
            if (device_dir / sub).is_dir():
                rels += [f"{sub}/{p.name}" for p in sorted((device_dir / sub).iterdir())
                         if p.is_file() and not p.name.startswith(".")]
        return [self.enqueue(device_dir, rel) for rel in rels if REL_RE.fullmatch(rel)]

    def drain(self) -> tuple[int, int]:
        """Try everything queued once; (held now, still queued). Stops at the first outage."""
        held = 0
        for upload in self.pending():
            try:
                self.ingest(upload)
                held += 1
            except StoreUnreachable as exc:
                log.warning("store unreachable, %d object(s) stay queued: %s", len(self.pending()), exc)
                break
            except IngestError as exc:
                log.error("%s", exc)
            except OSError as exc:      # the dock's copy is unreadable: an operator must look
                log.error("%s: cannot read the dock's copy (%s); left queued", upload.path, exc.strerror)
        return held, len(self.pending())


def iter_device_dirs(archive: Path) -> Iterator[Path]:
    for d in sorted(Path(archive).iterdir()):
        if d.is_dir() and not d.name.startswith(".") and (d / "identity.json").exists():
            yield d
