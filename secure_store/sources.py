"""Where one device's evidence is read from: a local directory or an S3 bucket, chosen by URL.

Like pyserial's URL handlers: ``open_source("s3://bucket/v1/met/CAM-0042")`` reads the
evidence store, any other location is a directory. ``verify_source`` streams a source's
files into a private temporary directory (ciphertext only: segments are encrypted to the
agency; removed when done) and runs the one verifier, ``verify_path``, with every reader
rule of docs/FORMAT.md, so a bucket verifies exactly as a dock's disk does. The store's key
layout (written by the dock's ingest, docs/STORE.md) is::

    <prefix>/<device-id>/identity.json, certs/<name>
    <prefix>/<device-id>/evidence/seg-*.seg | seg-*.manifest
    <prefix>/<device-id>/audit/<file>/<size:016d>-<sha256>      (the newest snapshot is read)
    <prefix>/<device-id>/receipts/<file>/<size:016d>-<sha256>   (likewise)

S3 credentials and endpoint come from boto3's usual places (``AWS_PROFILE``,
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ~/.aws).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Protocol

from secure_store.errors import VerifyError

_SEG_RE = re.compile(r"evidence/(seg-\d{1,20})\.(seg|manifest)")
_SNAPSHOT_RE = re.compile(r"((?:audit|receipts)/[A-Za-z0-9][A-Za-z0-9._-]{0,127})/(\d{16})-[0-9a-f]{64}")
_PLAIN_RE = re.compile(r"identity\.json|certs/[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class SourceError(VerifyError):
    """The evidence source cannot be read (bad URL, store unreachable, access refused)."""


class SourceUsageError(SourceError):
    """The location is not a usable ``s3://BUCKET/PREFIX/DEVICE`` URL (a usage error)."""

    exit_code = 2


class EvidenceSource(Protocol):
    """One device's evidence, file by file (``rel`` paths as in the dock's archive)."""

    url: str
    device_id: str

    def files(self) -> dict[str, int]:
        """rel path → size of every file (for audit logs, the newest snapshot)."""

    def open(self, rel: str) -> BinaryIO:
        """A stream of ``rel``'s bytes (read it in blocks; close it)."""


def is_store_url(location: str | Path) -> bool:
    return str(location).startswith("s3://")


def location(text: str) -> "str | Path":
    """argparse type for a PATH that may be an ``s3://`` URL (kept as text: Path would mangle it)."""
    return text if is_store_url(text) else Path(text)


def open_source(location: str | Path, client: Any = None) -> EvidenceSource:
    """An ``S3Source`` for ``s3://bucket/prefix/DEVICE``, else a ``DirectorySource``."""
    return S3Source(str(location), client) if is_store_url(location) else DirectorySource(Path(location))


class DirectorySource:
    """A device directory as the dock keeps it (identity.json, evidence/, audit/)."""

    def __init__(self, root: Path) -> None:
        self.root, self.url, self.device_id = Path(root), str(root), Path(root).name

    def files(self) -> dict[str, int]:
        return {p.relative_to(self.root).as_posix(): p.stat().st_size for p in sorted(self.root.rglob("*"))
                if p.is_file() and not p.name.startswith(".")}

    def open(self, rel: str) -> BinaryIO:
        return open(self.root / rel, "rb")


class S3Source:
    """``s3://bucket/prefix/DEVICE``: read straight from the evidence store, nothing written there."""

    def __init__(self, url: str, client: Any = None) -> None:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        prefix = prefix.strip("/")
        if not bucket or not prefix:
            raise SourceUsageError(f"{url}: expected s3://BUCKET/PREFIX/DEVICE-ID")
        self.url, self.bucket, self.prefix = url.rstrip("/"), bucket, prefix
        self.device_id = prefix.rsplit("/", 1)[-1]
        if client is None:
            import boto3
            client = boto3.session.Session().client("s3")
        self.client = client
        self._keys: dict[str, str] = {}

    def _call(self, what: str, fn: Any, **kw: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            return fn(Bucket=self.bucket, **kw)
        except ClientError as exc:
            err = exc.response.get("Error", {})
            raise SourceError(f"{self.url}: {what}: {err.get('Code')}: {err.get('Message') or 'refused'}") from None
        except BotoCoreError as exc:
            raise SourceError(f"{self.url}: {what}: store unreachable ({exc})") from None

    def files(self) -> dict[str, int]:
        found: dict[str, int] = {}
        newest_audit: dict[str, tuple[int, str]] = {}
        token: dict[str, str] = {}
        while True:
            page = self._call("list", self.client.list_objects_v2, Prefix=self.prefix + "/", **token)
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(self.prefix) + 1:]
                snapshot = _SNAPSHOT_RE.fullmatch(rel)
                if snapshot:
                    name, size = snapshot.group(1), int(snapshot.group(2))
                    if size >= newest_audit.get(name, (-1, ""))[0]:
                        newest_audit[name] = (size, obj["Key"])
                elif _PLAIN_RE.fullmatch(rel) or _SEG_RE.fullmatch(rel):
                    found[rel] = obj["Size"]
                    self._keys[rel] = obj["Key"]
            if not page.get("IsTruncated"):
                break
            token = {"ContinuationToken": page["NextContinuationToken"]}
        for name, (size, key) in newest_audit.items():
            found[name], self._keys[name] = size, key
        return dict(sorted(found.items()))

    def open(self, rel: str) -> BinaryIO:
        if not self._keys:
            self.files()
        key = self._keys.get(rel, f"{self.prefix}/{rel}")
        return self._call(f"get {rel}", self.client.get_object, Key=key)["Body"]


def copy_out(source: EvidenceSource, rel: str, dest: Path) -> None:
    """Stream one file of ``source`` to ``dest`` in 1 MiB blocks."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(source.open(rel)) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


@contextlib.contextmanager
def staged(source: EvidenceSource) -> Iterator[Path]:
    """The source's files in a private temporary device directory, laid out as a dock keeps
    them (ciphertext only: segments are encrypted to the agency), removed on exit."""
    with tempfile.TemporaryDirectory(prefix="bodycam-source-") as tmp:
        root = Path(tmp) / source.device_id
        root.mkdir()
        for rel in source.files():
            copy_out(source, rel, root / rel)
        yield root


def verify_source(source: EvidenceSource, device_key: Any = None, **rules: Any) -> Any:
    """``verify_path`` (every reader rule, ``rules`` = its trust options) on a source's files."""
    from secure_store.verify import verify_path
    with staged(source) as root:
        report = verify_path(root, device_key, **rules)
    report.segments = [dataclasses.replace(s, path=f"{source.url}/evidence/{Path(s.path).name}")
                       for s in report.segments]
    return report
