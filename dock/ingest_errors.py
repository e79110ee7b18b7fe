"""What can go wrong putting an object into the evidence store, as the dock must act on it.

Why apart: the dock acts on three kinds of failure differently (retry later, fix the config,
keep both copies), and boto3's error codes are mapped to them in one place.
"""

from __future__ import annotations

from dock.ingest_queue import IngestError

_UNREACHABLE_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "500", "502", "503", "504"}
_REFUSED_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "NoSuchBucket",
                  "InvalidToken", "ExpiredToken"}


class StoreUnreachable(IngestError):
    """The store did not answer (network, outage): keep the local copy and try again later."""


class StoreRefused(IngestError):
    """The store refused this dock (credentials, missing bucket, no Object Lock): fix the config."""


class ObjectConflict(IngestError):
    """The key already holds other bytes: never overwritten; the dock's copy kept beside it."""


def client_error(exc: Exception, what: str) -> IngestError:
    """Map a boto3 failure to unreachable (retry later) or refused (fix the config)."""
    from botocore.exceptions import ClientError
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        message = exc.response.get("Error", {}).get("Message", "") or code
        if code in _UNREACHABLE_CODES:
            return StoreUnreachable(f"{what}: store unavailable ({code})")
        if code in _REFUSED_CODES:
            return StoreRefused(f"{what}: store refused this dock ({code}: {message})")
        return IngestError(f"{what}: {code}: {message}")
    return StoreUnreachable(f"{what}: store unreachable ({type(exc).__name__}: {exc})")
