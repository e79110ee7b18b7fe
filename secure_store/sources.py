"""Where one device's evidence is read from: a local directory or an S3 bucket, chosen by URL.

Like pyserial's URL handlers: ``open_source("s3://bucket/v1/met/CAM-0042")`` reads the
evidence store, any other location is a directory. The verifier and the exporter read
through ``as_path``: a real ``Path`` for a location on disk (unchanged), a ``SourcePath``
for a source, which answers the few path questions they ask (``/``, ``name``, ``is_file``,
``iterdir``, ``glob``, ``open("rb")``, ``read_bytes``) from the source's listing and reads.
So a bucket verifies and exports exactly as a dock's disk does, with every reader rule of
docs/FORMAT.md, and **nothing is copied to disk**: a segment is read through ``S3Object``,
a seekable file object that fetches one window (``WINDOW`` bytes) per ranged GET, the next
one in the background while the reader hashes this one, never the whole object; small objects (manifests, audit snapshots, receipts, identity, certificates)
are one GET each, read into memory. The store's key layout (written by the dock's ingest,
docs/STORE.md) is::

    <prefix>/<device-id>/identity.json, certs/<name>
    <prefix>/<device-id>/evidence/seg-*.seg | seg-*.manifest
    <prefix>/<device-id>/audit/<file>/<size:016d>-<sha256>      (the newest snapshot is read)
    <prefix>/<device-id>/receipts/<file>/<size:016d>-<sha256>   (likewise)

S3 credentials and endpoint come from boto3's usual places (``AWS_PROFILE``,
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ~/.aws).
"""

from __future__ import annotations

import fnmatch
import io
import os
import re
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Iterator, Protocol, Union

from secure_store.errors import VerifyError

WINDOW = 8 * 1024 * 1024   # bytes per ranged GET of a segment: boto3's own multipart chunk size
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
        """A seekable, buffered binary stream of ``rel``'s bytes (read it in blocks; close it)."""

    def read_bytes(self, rel: str) -> bytes:
        """All of a small file's bytes (identity, a certificate, a manifest)."""


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

    def read_bytes(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()


class S3Source:
    """``s3://bucket/prefix/DEVICE``: read straight from the evidence store, nothing written anywhere."""

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
        self._listing: dict[str, tuple[str, int]] | None = None   # rel -> (key, size), listed once
        self._sizes: dict[str, int] | None = None

    def _call(self, what: str, fn: Any, **kw: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            return fn(Bucket=self.bucket, **kw)
        except ClientError as exc:
            err = exc.response.get("Error", {})
            raise SourceError(f"{self.url}: {what}: {err.get('Code')}: {err.get('Message') or 'refused'}") from None
        except BotoCoreError as exc:
            raise SourceError(f"{self.url}: {what}: store unreachable ({exc})") from None

    def _list(self) -> dict[str, tuple[str, int]]:
        if self._listing is not None:
            return self._listing
        found: dict[str, tuple[str, int]] = {}
        newest: dict[str, tuple[int, str]] = {}
        token: dict[str, str] = {}
        while True:
            page = self._call("list", self.client.list_objects_v2, Prefix=self.prefix + "/", **token)
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(self.prefix) + 1:]
                snapshot = _SNAPSHOT_RE.fullmatch(rel)
                if snapshot:
                    name, size = snapshot.group(1), int(snapshot.group(2))
                    if size >= newest.get(name, (-1, ""))[0]:
                        newest[name] = (size, obj["Key"])
                elif _PLAIN_RE.fullmatch(rel) or _SEG_RE.fullmatch(rel):
                    found[rel] = (obj["Key"], obj["Size"])
            if not page.get("IsTruncated"):
                break
            token = {"ContinuationToken": page["NextContinuationToken"]}
        for name, (size, key) in newest.items():
            found[name] = (key, size)
        self._listing = dict(sorted(found.items()))
        return self._listing

    def files(self) -> dict[str, int]:
        if self._sizes is None:
            self._sizes = {rel: size for rel, (_, size) in self._list().items()}
        return self._sizes

    def open(self, rel: str) -> BinaryIO:
        key, size = self._list().get(rel, (f"{self.prefix}/{rel}", None))
        if size is None:
            raise SourceError(f"{self.url}/{rel}: no such object")
        return S3Object(self, key, size, rel)  # type: ignore[return-value] - a binary file with its own window

    def read_bytes(self, rel: str) -> bytes:
        with self.open(rel) as f:
            return f.read()

    def get_range(self, key: str, start: int, length: int, rel: str) -> bytes:
        """Bytes ``start`` .. ``start + length`` of ``key``: one ranged GET."""
        body = self._call(f"get {rel}", self.client.get_object, Key=key,
                          Range=f"bytes={start}-{start + length - 1}")["Body"]
        try:
            return body.read()
        except Exception as exc:  # noqa: BLE001 - urllib3/botocore read errors: the store went away mid-body
            raise SourceError(f"{self.url}: get {rel}: store unreachable ({exc})") from None
        finally:
            body.close()


class S3Object(io.RawIOBase):
    """One object of the store as a seekable, read-only file: it holds one window of the
    object (one ranged GET of at most ``WINDOW`` bytes) and, once a reader is half-way
    through it, fetches the next one in the background, so hashing one window overlaps the
    GET of the next. At most two windows are in memory, never the whole object, and nothing
    is written to disk. A reader that only looks at the header causes one GET."""

    def __init__(self, source: S3Source, key: str, size: int, rel: str) -> None:
        super().__init__()
        self.source, self.key, self.size, self.name = source, key, size, rel
        self.window = max(1, WINDOW)
        self._pos = 0
        self._data, self._start = b"", 0          # the window held, and where it starts
        self._ahead: tuple[int, Future] | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def _fetch(self, start: int) -> bytes:
        want = min(self.window, self.size - start)
        data = self.source.get_range(self.key, start, want, self.name)
        if len(data) != want:
            raise SourceError(f"{self.source.url}/{self.name}: the store returned {len(data)} of {want} bytes "
                              f"at offset {start}")
        return data

    def _hold(self, start: int) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == start:
            self._data = ahead[1].result()
        else:
            if ahead is not None:
                ahead[1].cancel()
            self._data = self._fetch(start)
        self._start = start

    def readinto(self, buffer: Any) -> int:
        view, done = memoryview(buffer).cast("B"), 0
        while done < len(view) and self._pos < self.size:
            offset = self._pos - self._start
            if not 0 <= offset < len(self._data):
                self._hold(self._pos)
                offset = 0
            n = min(len(view) - done, len(self._data) - offset)
            view[done:done + n] = self._data[offset:offset + n]
            done, self._pos = done + n, self._pos + n
            end = self._start + len(self._data)
            if self._ahead is None and end < self.size and self._pos - self._start >= len(self._data) // 2:
                self._ahead = (end, _read_ahead().submit(self._fetch, end))
        return done

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead[1].cancel()
        self._ahead, self._data = None, b""
        super().close()


_POOL: list[ThreadPoolExecutor] = []


def _read_ahead() -> ThreadPoolExecutor:
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(4, thread_name_prefix="s3-read-ahead"))
    return _POOL[0]


# --- paths into a source: what the verifier and exporter read through -----------------------

_OPEN: "weakref.WeakValueDictionary[str, Any]" = weakref.WeakValueDictionary()


class _Stat:
    def __init__(self, size: int) -> None:
        self.st_size = size


class SourcePath:
    """A file or directory of one ``EvidenceSource``, answering the path questions the verifier
    asks. Only a ``DirectorySource``'s paths are file-system paths (``__fspath__``); one of the
    store handed to a plain ``open()`` fails instead of reading (or writing) a local file."""

    def __init__(self, source: EvidenceSource, rel: str = "") -> None:
        self.source, self.rel = source, rel.strip("/")
        if not self.rel:
            _OPEN[source.url] = source

    def __str__(self) -> str:
        return f"{self.source.url}/{self.rel}" if self.rel else self.source.url

    def __fspath__(self) -> str:
        if isinstance(self.source, DirectorySource):
            return str(self.source.root / self.rel)
        raise TypeError(f"{self}: in the evidence store, not a local file")

    def __repr__(self) -> str:
        return f"SourcePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SourcePath) and (self.source, self.rel) == (other.source, other.rel)

    def __lt__(self, other: "SourcePath") -> bool:
        return self.rel < other.rel

    def __hash__(self) -> int:
        return hash((id(self.source), self.rel))

    def __truediv__(self, name: str) -> "SourcePath":
        return SourcePath(self.source, f"{self.rel}/{name}" if self.rel else str(name))

    @property
    def _pure(self) -> PurePosixPath:
        return PurePosixPath(self.rel or self.source.device_id)

    @property
    def name(self) -> str:
        return self._pure.name

    @property
    def stem(self) -> str:
        return self._pure.stem

    @property
    def suffix(self) -> str:
        return self._pure.suffix

    @property
    def parent(self) -> "SourcePath":
        return SourcePath(self.source, self.rel.rpartition("/")[0]) if self.rel else self

    @property
    def parents(self) -> list["SourcePath"]:
        out, p = [], self
        while p.rel:
            p = p.parent
            out.append(p)
        return out

    def with_suffix(self, suffix: str) -> "SourcePath":
        return SourcePath(self.source, str(PurePosixPath(self.rel).with_suffix(suffix)))

    def resolve(self) -> "SourcePath":
        return self

    def is_file(self) -> bool:
        return self.rel in self.source.files()

    def is_dir(self) -> bool:
        prefix = f"{self.rel}/" if self.rel else ""
        return any(f.startswith(prefix) for f in self.source.files())

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def iterdir(self) -> Iterator["SourcePath"]:
        prefix = f"{self.rel}/" if self.rel else ""
        names = {f[len(prefix):].split("/", 1)[0] for f in self.source.files() if f.startswith(prefix)}
        if not names and not self.is_dir():
            raise FileNotFoundError(f"{self}: no such directory")
        return iter([self / n for n in sorted(names)])

    def glob(self, pattern: str) -> Iterator["SourcePath"]:
        """Files matching ``pattern`` (``*`` within one name, as pathlib's glob)."""
        prefix, parts = (f"{self.rel}/" if self.rel else ""), pattern.split("/")
        out = []
        for f in self.source.files():
            rest = f[len(prefix):].split("/") if f.startswith(prefix) else []
            if len(rest) == len(parts) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(rest, parts)):
                out.append(SourcePath(self.source, f))
        return iter(out)

    def stat(self) -> _Stat:
        size = self.source.files().get(self.rel)
        if size is None:
            raise FileNotFoundError(f"{self}: no such file")
        return _Stat(size)

    def open(self, mode: str = "rb", buffering: int = -1) -> BinaryIO:
        """A read-only binary stream (buffered whatever ``buffering`` says: a read is a request)."""
        if mode != "rb":
            raise ValueError(f"{self}: evidence sources are read-only (mode {mode!r})")
        if not self.is_file():
            raise FileNotFoundError(f"{self}: no such file")
        return self.source.open(self.rel)

    def read_bytes(self) -> bytes:
        if not self.is_file():
            raise FileNotFoundError(f"{self}: no such file")
        return self.source.read_bytes(self.rel)


PathLike = Union[str, Path, SourcePath]


def as_path(path: PathLike) -> Any:
    """``path`` as something to read through: a ``SourcePath`` stays one, the text of a path
    into an open source (``s3://…/evidence/seg-….seg``, as reports name it) becomes one
    again, anything else is a plain ``Path``: local reads are exactly what they were."""
    if isinstance(path, SourcePath):
        return path
    text = str(path)
    if is_store_url(text):
        for url in sorted(_OPEN.keys(), key=len, reverse=True):
            if text == url or text.startswith(url + "/"):
                return SourcePath(_OPEN[url], text[len(url) + 1:])
        return SourcePath(open_source(text))
    return Path(path)


def listdir(directory: PathLike) -> list[str]:
    """``os.listdir`` for a path or a source directory."""
    if isinstance(directory, SourcePath):
        return [p.name for p in directory.iterdir()]
    return os.listdir(directory)

