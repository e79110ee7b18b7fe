"""Wrapping each segment's data key to the agency: the segment header's ``suite`` (docs/FORMAT.md).

Suite 1 wraps with HPKE over X25519; suite 2 with HPKE over the hybrid KEM
ML-KEM-768 + X25519 (``MLKEM768_X25519``), so footage recorded today stays closed to a
future quantum computer unless *both* halves fall. The suite follows the agency key's
kind: a device sealing to a hybrid agency key writes suite 2, one sealing to an X25519
key suite 1, and a reader refuses a key of the other kind with one clear line instead of
a vague "does not decrypt".
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import x25519

from secure_store import hybrid
from secure_store.errors import FormatError, VerifyError

SUITE_HPKE_X25519_AES256GCM = 1
SUITE_HPKE_MLKEM768X25519_AES256GCM = 2
HPKE_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
HPKE_SUITE_PQ = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
HPKE_INFO = b"bodycam segment data key v1"
WRAPPED_KEY_LEN = 80      # suite 1: HPKE enc (32) || AES-256-GCM(data key) (32 + 16)
WRAPPED_KEY_LEN_PQ = 1168  # suite 2: HPKE enc (ML-KEM ciphertext 1088 || X25519 32) || sealed data key (48)
WRAPPED_KEY_LENS = {SUITE_HPKE_X25519_AES256GCM: WRAPPED_KEY_LEN,
                    SUITE_HPKE_MLKEM768X25519_AES256GCM: WRAPPED_KEY_LEN_PQ}
SUITE_NAMES = {SUITE_HPKE_X25519_AES256GCM: "hpke-x25519",
               SUITE_HPKE_MLKEM768X25519_AES256GCM: "hpke-mlkem768-x25519"}
_KEY_KINDS = {SUITE_HPKE_X25519_AES256GCM: "X25519 only",
              SUITE_HPKE_MLKEM768X25519_AES256GCM: "hybrid ML-KEM-768 + X25519"}


def suite_for(agency_key) -> int:
    """The suite of a segment sealed to (or opened by) ``agency_key``, public or private; FormatError for any
    other key."""
    if isinstance(agency_key, (hybrid.HybridAgencyPublicKey, hybrid.HybridAgencyKey)):
        return SUITE_HPKE_MLKEM768X25519_AES256GCM
    if isinstance(agency_key, (x25519.X25519PublicKey, x25519.X25519PrivateKey)):
        return SUITE_HPKE_X25519_AES256GCM
    raise FormatError("an agency key must be X25519 or hybrid ML-KEM-768 + X25519, "
                      f"not {type(agency_key).__name__}")


def wrap_data_key(data_key: bytes, agency_public_key) -> bytes:
    """HPKE base-mode single-shot seal of the data key to the agency (RFC 9180), in the key's suite."""
    if suite_for(agency_public_key) == SUITE_HPKE_MLKEM768X25519_AES256GCM:
        return HPKE_SUITE_PQ.encrypt(data_key, agency_public_key.hpke_key(), info=HPKE_INFO)
    return HPKE_SUITE.encrypt(data_key, agency_public_key, info=HPKE_INFO)


def suite_mismatch(suite: int, agency_private_key, what: str = "segment") -> str | None:
    """Why ``agency_private_key`` is of the wrong kind for a segment of ``suite``, or None if it is of the right one."""
    have = suite_for(agency_private_key)
    if have == suite:
        return None
    return (f"{what}: sealed with suite {suite} ({_KEY_KINDS.get(suite, 'unknown')}); "
            f"this agency key is {_KEY_KINDS[have]}")


def unwrap_data_key(wrapped: bytes, agency_private_key, what: str = "segment",
                    suite: int = SUITE_HPKE_X25519_AES256GCM) -> bytes:
    """The data key of a segment of ``suite``; VerifyError if this agency key cannot open it."""
    wrong = suite_mismatch(suite, agency_private_key, what)
    if wrong:
        raise VerifyError(wrong)
    try:
        if suite == SUITE_HPKE_MLKEM768X25519_AES256GCM:
            key = HPKE_SUITE_PQ.decrypt(wrapped, agency_private_key.hpke_key(), info=HPKE_INFO)
        else:
            key = HPKE_SUITE.decrypt(wrapped, agency_private_key, info=HPKE_INFO)
    except Exception:  # cryptography raises InvalidTag or ValueError here
        raise VerifyError(f"{what}: data key does not unwrap with this agency key") from None
    if len(key) != 32:
        raise VerifyError(f"{what}: wrapped data key has {len(key)} bytes, not 32")
    return key
