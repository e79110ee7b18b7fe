"""The exceptions secure_store raises: one base, one type per thing the caller may handle.

Every message is one line that names the file (and chunk) at fault, so the CLI
can print it as it is.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every secure_store error; the CLI exits with ``exit_code``."""

    exit_code = 1


class FormatError(StoreError):
    """A segment, manifest or key file does not parse: bad magic, unknown version, bad field."""


class TornRecordError(FormatError):
    """A segment ends in a partly written chunk record (a power cut while appending).

    ``good_end`` is the byte offset where the last complete record ends.
    """

    def __init__(self, message: str, good_end: int, chunk: int) -> None:
        super().__init__(message)
        self.good_end = good_end
        self.chunk = chunk


class VerifyError(StoreError):
    """Evidence does not verify: signature, hash, chain or decryption failed."""


class StorageFull(StoreError):
    """No room for more evidence; recording refuses to start or stops cleanly."""


class KeyMissing(StoreError):
    """A key the store needs is not provisioned (or is the wrong kind)."""


class SealerStateError(StoreError):
    """A ChunkSink method was called out of order (e.g. write_chunk before begin_segment)."""


class ReleaseRefused(StoreError):
    """``release`` was asked to delete evidence without the right confirmation."""


class AuditError(StoreError):
    """The audit log cannot be written, or a file in it does not parse (bad header, version, entry)."""


class UsageError(StoreError):
    """The command line asked for something impossible (bad kind, missing path or key file)."""

    exit_code = 2
