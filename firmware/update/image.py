"""Signed firmware images: build, parse strictly, verify.

An image is one file (the full format is in docs/FIRMWARE.md)::

    header     16 bytes   magic b"BCAMFW\\r\\n", u16 format version (1 classic, 2 hybrid),
                          u32 manifest length, u16 signature block length (96, or 3405 in format 2)
    manifest   canonical JSON: image_format, version, min_version, built_utc, files[path, type, size, sha256, mode]
    signature  32-byte SHA-256 of the vendor's Ed25519 public key + 64-byte Ed25519 signature
               (+ 3309-byte ML-DSA-65 signature in format 2), each over SIGNING_CONTEXT + manifest
    payload    the files' bytes, back to back, in manifest order; nothing after

Every length is checked against a hard limit before anything is read, the manifest is
verified before any payload byte is trusted, and each file's SHA-256 is checked as it
streams by, so a hostile image costs at most the limits and never a write outside its slot.

A hybrid vendor key (Ed25519 + ML-DSA-65) builds format-2 images, whose signed manifest
says ``image_format`` 2, so stripping the ML-DSA-65 signature cannot pass for a format-1
image; a device that trusts a hybrid vendor key refuses format-1 images, and one that
trusts a classic key refuses format 2 (a signature it cannot check protects nothing).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from secure_store import hybrid, keys

log = logging.getLogger(__name__)

MAGIC = b"BCAMFW\r\n"
FORMAT_VERSION = 1          # signed by a classic (Ed25519) vendor key
HYBRID_FORMAT_VERSION = 2   # signed by a hybrid vendor key: Ed25519 and ML-DSA-65
HEADER = struct.Struct(">8sHIH")
SIGNING_CONTEXT = b"bodycam firmware image v1\x00"
SIGNATURE_BLOCK = 32 + 64
HYBRID_SIGNATURE_BLOCK = SIGNATURE_BLOCK + hybrid.MLDSA65_SIGNATURE_LEN  # 3405
_BLOCK_LEN = {FORMAT_VERSION: SIGNATURE_BLOCK, HYBRID_FORMAT_VERSION: HYBRID_SIGNATURE_BLOCK}

MAX_MANIFEST_BYTES = 1 << 20
MAX_FILES = 4096
MAX_FILE_BYTES = 64 << 20
MAX_TOTAL_BYTES = 256 << 20
MAX_PATH_BYTES = 255
MAX_DEPTH = 16
ALLOWED_MODES = (0o644, 0o755)
_READ = 1 << 16

_VERSION_RE = re.compile(r"(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})")
_COMPONENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*")
_MANIFEST_KEYS = {"image_format", "version", "min_version", "built_utc", "files"}
_FILE_KEYS = {"path", "type", "size", "sha256", "mode"}


class ImageError(Exception):
    """A firmware image is malformed, unsigned, wrongly signed or tampered with; says which."""

    exit_code = 1


def parse_version(text: str) -> tuple[int, int, int]:
    """``"1.2.3"`` → ``(1, 2, 3)``; anything else is refused."""
    match = _VERSION_RE.fullmatch(text) if isinstance(text, str) else None
    if not match:
        raise ImageError(f"version {text!r} is not X.Y.Z")
    return tuple(int(g) for g in match.groups())  # type: ignore[return-value]


@dataclass(frozen=True)
class FileEntry:
    """One regular file of an image."""

    path: str
    size: int
    sha256: str
    mode: int


@dataclass(frozen=True)
class Manifest:
    """The signed description of an image."""

    version: str
    min_version: str
    built_utc: str
    files: tuple[FileEntry, ...]
    raw: bytes  # the exact signed bytes
    image_format: int = FORMAT_VERSION  # 2: signed by a hybrid vendor key

    @property
    def payload_size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def digest(self) -> str:
        """SHA-256 of the signed manifest: names this exact image."""
        return hashlib.sha256(self.raw).hexdigest()


def canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def check_path(path: object) -> str:
    """A relative path of plain components: no absolute, '..', '.', empty or odd names."""
    if not isinstance(path, str) or not path:
        raise ImageError(f"file path {path!r} is not a non-empty string")
    if path.startswith("/") or re.match(r"[A-Za-z]:", path) or "\\" in path:
        raise ImageError(f"absolute path {path!r} in image")
    parts = path.split("/")
    if ".." in parts:
        raise ImageError(f"path traversal {path!r} in image")
    if len(path.encode()) > MAX_PATH_BYTES or len(parts) > MAX_DEPTH:
        raise ImageError(f"path {path[:60]!r}... too long or too deep")
    for part in parts:
        if not _COMPONENT_RE.fullmatch(part):
            raise ImageError(f"path {path!r} has a bad component {part!r}")
    return path


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    keys_seen = [k for k, _ in pairs]
    if len(keys_seen) != len(set(keys_seen)):
        raise ImageError("manifest has duplicate keys")
    return dict(pairs)


def _file_entry(obj: object) -> FileEntry:
    if not isinstance(obj, dict):
        raise ImageError("manifest file entry is not an object")
    path = check_path(obj.get("path"))
    kind = obj.get("type")
    if kind in ("symlink", "hardlink", "link"):
        raise ImageError(f"entry {path!r} is a {kind}; images hold regular files only")
    if kind != "file":
        raise ImageError(f"entry {path!r} has type {kind!r}; images hold regular files only")
    if set(obj) != _FILE_KEYS:
        raise ImageError(f"entry {path!r} has fields {sorted(obj)}, expected {sorted(_FILE_KEYS)}")
    size, digest, mode = obj["size"], obj["sha256"], obj["mode"]
    if type(size) is not int or size < 0:
        raise ImageError(f"entry {path!r} has a bad size {size!r}")
    if size > MAX_FILE_BYTES:
        raise ImageError(f"entry {path!r} is oversized: {size} bytes > limit {MAX_FILE_BYTES}")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ImageError(f"entry {path!r} has a bad sha256")
    if type(mode) is not int or mode not in ALLOWED_MODES:
        raise ImageError(f"entry {path!r} has mode {mode!r}; allowed {[oct(m) for m in ALLOWED_MODES]}")
    return FileEntry(path, size, digest, mode)


def parse_manifest(raw: bytes) -> Manifest:
    """Strictly decode manifest bytes (already size-bounded); checks every field and limit."""
    try:
        obj = json.loads(raw.decode("ascii"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, ImageError):
            raise
        raise ImageError("manifest is not ASCII JSON") from None
    if not isinstance(obj, dict) or set(obj) != _MANIFEST_KEYS:
        raise ImageError(f"manifest fields are not {sorted(_MANIFEST_KEYS)}")
    if type(obj["image_format"]) is not int or obj["image_format"] not in _BLOCK_LEN:
        raise ImageError(f"manifest format {obj['image_format']!r} unsupported")
    parse_version(obj["version"])
    parse_version(obj["min_version"])
    if not isinstance(obj["built_utc"], str) or len(obj["built_utc"]) > 40:
        raise ImageError("manifest built_utc is not a timestamp")
    if not isinstance(obj["files"], list) or len(obj["files"]) > MAX_FILES:
        raise ImageError(f"manifest files is not a list of at most {MAX_FILES} entries")
    files = tuple(_file_entry(f) for f in obj["files"])
    seen: set[str] = set()
    for f in files:
        if f.path in seen:
            raise ImageError(f"duplicate path {f.path!r} in image")
        seen.add(f.path)
    if [f.path for f in files] != sorted(seen):
        raise ImageError("manifest files are not in path order")
    for f in files:  # a file cannot also be a directory of another entry
        parts = f.path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in seen:
                raise ImageError(f"path {f.path!r} runs through file {'/'.join(parts[:i])!r}")
    total = sum(f.size for f in files)
    if total > MAX_TOTAL_BYTES:
        raise ImageError(f"image is oversized: {total} bytes of files > limit {MAX_TOTAL_BYTES}")
    return Manifest(obj["version"], obj["min_version"], obj["built_utc"], files, raw, obj["image_format"])


def _read_exact(stream: BinaryIO, n: int, what: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise ImageError(f"image truncated in the {what} ({len(data)} of {n} bytes)")
    return data


def read_manifest(stream: BinaryIO, vendor_key: "hybrid.VerifyKey | ed25519.Ed25519PublicKey") -> Manifest:
    """Read header, manifest and signature(s) from ``stream`` and verify them with the vendor key.

    A hybrid vendor key accepts only format-2 images with both signatures valid; a classic
    key only format-1 images. Leaves ``stream`` at the first payload byte.
    """
    vendor_key = hybrid.as_verify_key(vendor_key)
    header = stream.read(HEADER.size)
    if len(header) < len(MAGIC) or header[: len(MAGIC)] != MAGIC:
        raise ImageError("not a bodycam firmware image (bad magic)")
    if len(header) != HEADER.size:
        raise ImageError("image truncated in the header")
    _, fmt, manifest_len, sig_len = HEADER.unpack(header)
    if fmt not in _BLOCK_LEN:
        raise ImageError(f"image format version {fmt} unsupported (this reader knows "
                         f"{FORMAT_VERSION} and {HYBRID_FORMAT_VERSION})")
    if manifest_len > MAX_MANIFEST_BYTES:
        raise ImageError(f"manifest of {manifest_len} bytes is oversized (limit {MAX_MANIFEST_BYTES})")
    raw = _read_exact(stream, manifest_len, "manifest")
    if sig_len == 0:
        raise ImageError("image is unsigned")
    if sig_len != _BLOCK_LEN[fmt]:
        raise ImageError(f"signature block of {sig_len} bytes (expected {_BLOCK_LEN[fmt]} in format {fmt})")
    block = _read_exact(stream, sig_len, "signature")
    key_id, signature, pq_signature = block[:32], block[32:96], block[96:] or None
    expected = bytes.fromhex(keys.fingerprint(vendor_key))
    if key_id != expected:
        raise ImageError(
            f"image signed by key {key_id.hex()[:16]}, not the vendor key {expected.hex()[:16]} (wrong key)"
        )
    if vendor_key.hybrid and pq_signature is None:
        raise ImageError("classic-only signature from a hybrid vendor key (format-1 image refused: "
                         "this device needs the ML-DSA-65 signature too)")
    if not vendor_key.hybrid and pq_signature is not None:
        raise ImageError("image carries an ML-DSA-65 signature, but the vendor key has no ML-DSA-65 key to check it")
    try:
        vendor_key.ed25519.verify(signature, SIGNING_CONTEXT + raw)
    except InvalidSignature:
        raise ImageError("signature does not verify with the vendor key (manifest tampered)") from None
    if pq_signature is not None:
        try:
            vendor_key.mldsa65.verify(pq_signature, SIGNING_CONTEXT + raw)
        except InvalidSignature:
            raise ImageError("ML-DSA-65 signature does not verify with the vendor key (manifest tampered)") from None
    manifest = parse_manifest(raw)
    if manifest.image_format != fmt:
        raise ImageError(f"manifest says image format {manifest.image_format} in a format-{fmt} image")
    return manifest


def iter_files(
    stream: BinaryIO, manifest: Manifest
) -> Iterator[tuple[FileEntry, Callable[[], Iterator[bytes]]]]:
    """Yield each entry with a reader of its verified chunks; the last chunk is yielded only
    after the file's SHA-256 matches. Raises ImageError on tamper, truncation or trailing data."""
    for entry in manifest.files:
        done = False

        def chunks(entry: FileEntry = entry) -> Iterator[bytes]:
            nonlocal done
            digest, left = hashlib.sha256(), entry.size
            pending = b""
            while left:
                data = stream.read(min(_READ, left))
                if not data:
                    raise ImageError(f"image truncated in file {entry.path!r}")
                left -= len(data)
                digest.update(data)
                if pending:
                    yield pending
                pending = data
            if digest.hexdigest() != entry.sha256:
                raise ImageError(f"file {entry.path!r} does not match its SHA-256 (tampered file)")
            done = True
            if pending:
                yield pending

        yield entry, chunks
        if not done:  # the consumer skipped it: still read and check it
            for _ in chunks():
                pass
    if stream.read(1):
        raise ImageError("image has trailing data after the last file")


def verify_image(path: str | Path, vendor_key: "hybrid.VerifyKey | ed25519.Ed25519PublicKey") -> Manifest:
    """Check the whole image (signature, manifest, every file hash) without writing anything."""
    try:
        with open(path, "rb") as stream:
            manifest = read_manifest(stream, vendor_key)
            for _ in iter_files(stream, manifest):
                pass
    except OSError as exc:
        raise ImageError(f"cannot read image {path}: {exc.strerror}") from None
    return manifest


def collect_source(source_dir: str | Path) -> list[tuple[Path, FileEntry]]:
    """Walk SOURCE_DIR into entries; refuses symlinks, special files and hard-linked files."""
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise ImageError(f"source {source_dir} is not a directory")
    found: list[tuple[Path, FileEntry]] = []
    for dirpath, dirnames, filenames in os.walk(source_dir, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = Path(dirpath, name)
            rel = full.relative_to(source_dir).as_posix()
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                raise ImageError(f"source has a symlink {rel!r}; images hold regular files only")
            if not stat.S_ISREG(st.st_mode):
                raise ImageError(f"source has a special file {rel!r}")
            check_path(rel)
            mode = 0o755 if st.st_mode & 0o111 else 0o644
            with open(full, "rb") as f:
                digest = hashlib.file_digest(f, "sha256")
            found.append((full, FileEntry(rel, st.st_size, digest.hexdigest(), mode)))
    found.sort(key=lambda item: item[1].path)
    return found


def pack(manifest_raw: bytes, signature_block: bytes, payloads: Iterator[bytes] | list[bytes], out: BinaryIO,
         fmt: int | None = None) -> None:
    """Low-level writer: header + manifest + signature block + payload, no checks (tests use it).

    ``fmt`` defaults to 2 for a hybrid-sized signature block, else 1.
    """
    if fmt is None:
        fmt = HYBRID_FORMAT_VERSION if len(signature_block) == HYBRID_SIGNATURE_BLOCK else FORMAT_VERSION
    out.write(HEADER.pack(MAGIC, fmt, len(manifest_raw), len(signature_block)))
    out.write(manifest_raw)
    out.write(signature_block)
    for data in payloads:
        out.write(data)


def sign_manifest(manifest_raw: bytes, vendor_private: "hybrid.SigningKey | ed25519.Ed25519PrivateKey") -> bytes:
    """The signature block: key fingerprint + Ed25519 signature (96 bytes), + ML-DSA-65 signature if hybrid."""
    vendor_private = hybrid.as_signing_key(vendor_private)
    key_id = bytes.fromhex(keys.fingerprint(vendor_private.public_key()))
    signatures = vendor_private.sign(SIGNING_CONTEXT + manifest_raw)
    return key_id + signatures.ed25519 + (signatures.mldsa65 or b"")


def manifest_bytes(version: str, min_version: str, files: list[FileEntry], built_utc: str | None = None,
                   image_format: int = FORMAT_VERSION) -> bytes:
    """Canonical manifest JSON for these entries (``image_format`` 2 for a hybrid vendor key)."""
    built_utc = built_utc or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return canonical_json({
        "image_format": image_format,
        "version": version,
        "min_version": min_version,
        "built_utc": built_utc,
        "files": [
            {"path": f.path, "type": "file", "size": f.size, "sha256": f.sha256, "mode": f.mode}
            for f in files
        ],
    })


def build_image(
    source_dir: str | Path,
    version: str,
    vendor_private: "hybrid.SigningKey | ed25519.Ed25519PrivateKey",
    out_path: str | Path,
    min_version: str = "0.0.0",
) -> Manifest:
    """Build and sign an image of SOURCE_DIR; the result is checked by parsing it back."""
    if parse_version(min_version) > parse_version(version):
        raise ImageError(f"min_version {min_version} is above version {version}")
    vendor_private = hybrid.as_signing_key(vendor_private)
    found = collect_source(source_dir)
    raw = manifest_bytes(version, min_version, [entry for _, entry in found],
                         image_format=HYBRID_FORMAT_VERSION if vendor_private.hybrid else FORMAT_VERSION)
    manifest = parse_manifest(raw)  # the same limits the device applies

    def payloads() -> Iterator[bytes]:
        for full, entry in found:
            with open(full, "rb") as f:
                data = f.read(entry.size + 1)
            if hashlib.sha256(data).hexdigest() != entry.sha256:
                raise ImageError(f"source file {entry.path!r} changed while building")
            yield data

    out_path = Path(out_path)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as out:
            pack(raw, sign_manifest(raw, vendor_private), payloads(), out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("built firmware %s: %d files, %d bytes", version, len(found), manifest.payload_size)
    return manifest
