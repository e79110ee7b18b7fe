"""A large object goes into the evidence store in parts: several at once, each with its SHA-256.

Why apart from ``dock.ingest``: the part arithmetic (which checksum each part carries, what
composite checksum the store will report, whether the whole file read for the parts is still
the file the dock verified) is the same for a first upload and a resumed one, and is easier
to check on its own. Parts already at the store (same size and MD5 ETag) are kept, not sent
again. Nothing here aborts an upload: a bucket lifecycle rule reclaims abandoned ones.
"""

from __future__ import annotations

import base64
import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


PART_SIZE = 8 * 2**20    # the store config's default part size: what the pull's fetch hashes parts at


class PartDigest:
    """SHA-256 of a whole file and of each ``part_size`` part of it, taken in one pass as the
    bytes come (the pull's fetch feeds it; ingest then hashes nothing: each part goes up with
    its SHA-256 and the store refuses bytes that differ)."""

    def __init__(self, part_size: int = PART_SIZE) -> None:
        self.part_size, self.size = part_size, 0
        self._whole, self._part, self._parts = hashlib.sha256(), hashlib.sha256(), []

    @classmethod
    def of_file(cls, path: Path, part_size: int = PART_SIZE) -> "PartDigest":
        digest = cls(part_size)
        with open(path, "rb") as f:
            while block := f.read(part_size):
                digest.update(block)
        return digest

    def update(self, data: bytes) -> None:
        self._whole.update(data)
        view = memoryview(data)
        while view:
            take = self.part_size - self.size % self.part_size
            self._part.update(view[:take])
            self.size += len(view[:take])
            view = view[take:]
            if self.size % self.part_size == 0:
                self._parts.append(b64(self._part.digest()))
                self._part = hashlib.sha256()

    def hexdigest(self) -> str:
        return self._whole.hexdigest()

    def parts(self) -> list[str]:
        """Each part's SHA-256 in base64 (the last one short), as S3's part checksums."""
        return self._parts + ([b64(self._part.digest())] if self.size % self.part_size else [])


def hash_file(path: Path, part_size: int) -> tuple[str, int, list[str]]:
    """(SHA-256 hex, size, each part's SHA-256 in base64) of a file, in one pass."""
    digest = PartDigest.of_file(path, part_size)
    return digest.hexdigest(), digest.size, digest.parts()


def composite(part_checksums: list[str]) -> str:
    """The checksum S3 reports for a multipart object: SHA-256 of the parts' SHA-256s, "-N"."""
    return f"{b64(hashlib.sha256(b''.join(base64.b64decode(c) for c in part_checksums)).digest())}" \
           f"-{len(part_checksums)}"


def send_parts(client: Any, bucket: str, key: str, upload_id: str, path: Path, size: int, part_size: int,
               concurrency: int, done: dict[int, dict], sums: list[str] | None) -> tuple[list[dict], str | None, int]:
    """Send every part of ``path`` (``concurrency`` at once; those in ``done`` with the same bytes
    are kept). Each part carries its SHA-256: from ``sums`` (taken with the file's SHA-256) if
    given, else hashed as it is read. Returns (parts for CompleteMultipartUpload, the SHA-256
    hex of the whole file as read for them when the parts were hashed here, else None, how
    many parts were kept)."""
    count = -(-size // part_size)
    whole = hashlib.sha256() if sums is None or len(sums) != count else None
    resumed = 0

    def send(number: int, data: bytes) -> dict:
        nonlocal resumed
        checksum = b64(hashlib.sha256(data).digest()) if whole is not None else sums[number - 1]
        held = done.get(number)
        if held and held.get("Size") == len(data) and held.get("ETag", "").strip('"') == hashlib.md5(
                data, usedforsecurity=False).hexdigest():
            resumed += 1
            return {"PartNumber": number, "ETag": held["ETag"], "ChecksumSHA256": checksum}
        answer = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                    Body=data, ChecksumSHA256=checksum)
        return {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum}

    with open(path, "rb") as f, ThreadPoolExecutor(concurrency, thread_name_prefix="ingest-part") as pool:
        futures = []
        for number in range(1, count + 1):
            if len(futures) >= concurrency:   # bound memory: parts in flight
                futures[len(futures) - concurrency].result()
            data = f.read(part_size)
            if whole is not None:
                whole.update(data)
            futures.append(pool.submit(send, number, data))
        parts = [fut.result() for fut in futures]
    return parts, (whole.hexdigest() if whole is not None else None), resumed
