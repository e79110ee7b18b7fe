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


def hash_file(path: Path, part_size: int) -> tuple[str, int, list[str]]:
    """(SHA-256 hex, size, each part's SHA-256 in base64) of a file, in one pass."""
    whole, parts, size = hashlib.sha256(), [], 0
    with open(path, "rb") as f:
        while block := f.read(part_size):
            whole.update(block)
            parts.append(b64(hashlib.sha256(block).digest()))
            size += len(block)
    return whole.hexdigest(), size, parts


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
