"""Best effort: the chunks of a damaged segment that still match its signed manifest.

A bit flip in one chunk of a 10-s segment should cost one second of video, not ten. The
manifest (whose signature verified) lists each chunk's SHA-256; every record whose digest
matches is authentic, and AES-GCM authenticates its plaintext again as it is opened. Records
that do not match are skipped and named; a record whose framing is broken ends the salvage
there, as a torn tail would. Used only by ``export --best-effort``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, NamedTuple

from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secure_store import keys
from secure_store.errors import StoreError, TornRecordError
from secure_store.format import Manifest, iter_records, open_record, read_header, sha256
from secure_store.keywrap import suite_mismatch, unwrap_data_key

from export.errors import ExportError

log = logging.getLogger(__name__)


class SalvagedChunk(NamedTuple):
    """One chunk of a damaged segment: its plaintext, or None and why it is lost."""

    index: int
    plaintext: bytes | None
    lost: str = ""


def salvage_chunks(segment: Path, manifest: Manifest, agency_key: Any) -> Iterator[SalvagedChunk]:
    """Each chunk of ``segment`` in order (the final, empty one excepted), opened only if authentic.

    ``agency_key``: the agency's X25519 or hybrid (ML-KEM-768 + X25519) private key.
    """
    name, expected = segment.name, manifest.chunk_digests
    raw_public = keys.raw_public(agency_key.public_key())
    seen = 0
    try:
        with segment.open("rb", buffering=0) as f:
            header, raw = read_header(f, name)
            header_digest = sha256(raw)
            if header_digest != manifest.header_digest:
                raise ExportError(f"{name}: header altered, so no chunk of it can be opened")
            wrong_kind = suite_mismatch(header.suite, agency_key, name)
            if wrong_kind:
                raise ExportError(wrong_kind)
            if header.agency_key_fp != sha256(raw_public):
                raise ExportError(f"{name}: sealed to another agency key")
            aead = AESGCM(unwrap_data_key(header.wrapped_key, agency_key, name, header.suite))
            for record in iter_records(f, len(raw), name):
                seen = record.index + 1
                if record.index >= len(expected):
                    break
                if record.digest != expected[record.index]:
                    yield SalvagedChunk(record.index, None, "ciphertext does not match the signed manifest")
                elif not record.meta.final:
                    yield SalvagedChunk(record.index, open_record(aead, header_digest, record, name))
    except TornRecordError as exc:
        log.warning("%s: salvage stops at chunk %d: %s", name, exc.chunk, exc)
        seen = exc.chunk
    except (OSError, StoreError) as exc:
        raise ExportError(f"{name}: {exc}") from None
    last_data = len(expected) - (0 if manifest.recovered else 1)  # a sealed segment ends in an empty final chunk
    for index in range(seen, last_data):
        yield SalvagedChunk(index, None, "missing or unreadable (file cut short or its framing broken)")
