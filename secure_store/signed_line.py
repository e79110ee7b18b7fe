"""The one-line signed envelope shared by audit entries and receipts, classic or hybrid.

    {"body":BODY,"sig":"<128 hex>"}                                   version 1: Ed25519
    {"body":BODY,"sig":"<128 hex>","sig_mldsa65":"<4412 base64>"}     version 2: + ML-DSA-65

The envelope has fixed bytes around ``BODY`` so a verifier slices the signed body out
without re-serialising anything. Which envelope a line has is decided by its last bytes
alone: a version-2 line ends in ``","sig_mldsa65":"``, 4412 bytes without a ``"``, then
``"}``; a version-1 line has a ``"`` 131 bytes from its end, so it can never look like one.
The ML-DSA-65 signature (3309 bytes = 3 x 1103, so never padded) is standard base64 in its
one canonical encoding: base64, not hex, keeps the bytes per entry down. docs/FORMAT.md
("Entry line", "Receipts") is the normative text.
"""

from __future__ import annotations

import base64
import binascii
import re

from secure_store import hybrid

BODY_PREFIX = b'{"body":'
SIG_PREFIX = b',"sig":"'
MLDSA_PREFIX = b'","sig_mldsa65":"'
SUFFIX = b'"}'
MLDSA_B64_LEN = 4412
CLASSIC_TAIL = len(SIG_PREFIX) + 128 + len(SUFFIX)                                       # 138 bytes
HYBRID_TAIL = len(SIG_PREFIX) + 128 + len(MLDSA_PREFIX) + MLDSA_B64_LEN + len(SUFFIX)   # 4567 bytes
_HEX_RE = re.compile(rb"[0-9a-f]{128}")
_B64_RE = re.compile(rb"[A-Za-z0-9+/]+")


class EnvelopeError(ValueError):
    """A line that is not exactly one of the two envelopes; the message says what is wrong."""


def decode_mldsa65(text: bytes) -> bytes:
    """The 3309-byte signature ``text`` encodes; refuses any but its canonical base64."""
    if len(text) != MLDSA_B64_LEN or not _B64_RE.fullmatch(text):
        raise EnvelopeError("sig_mldsa65 is not the canonical base64 of a 3309-byte ML-DSA-65 signature")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError("sig_mldsa65 is not valid base64") from None
    # 4412 alphabet characters are 1103 whole groups: no padding, no unused bits, so this is the
    # one encoding of these bytes (re-encoding would give the same text).
    if len(raw) != hybrid.MLDSA65_SIGNATURE_LEN:
        raise EnvelopeError("sig_mldsa65 is not the canonical base64 of a 3309-byte ML-DSA-65 signature")
    return raw


def split(line: bytes) -> tuple[bytes, hybrid.Signatures]:
    """(BODY, signatures) of one line without its LF; ``signatures.mldsa65`` is None for version 1."""
    if not (line.startswith(BODY_PREFIX) and line.endswith(SUFFIX)):
        raise EnvelopeError("bad envelope")
    pq_at = len(line) - HYBRID_TAIL + len(SIG_PREFIX) + 128
    pq_text = line[pq_at + len(MLDSA_PREFIX):-len(SUFFIX)]
    hybrid_line = (len(line) >= len(BODY_PREFIX) + 2 + HYBRID_TAIL
                   and line[pq_at:pq_at + len(MLDSA_PREFIX)] == MLDSA_PREFIX and b'"' not in pq_text)
    mldsa = decode_mldsa65(pq_text) if hybrid_line else None
    tail = HYBRID_TAIL if hybrid_line else CLASSIC_TAIL
    if not (len(line) >= len(BODY_PREFIX) + 2 + tail and line[-tail:-tail + len(SIG_PREFIX)] == SIG_PREFIX):
        raise EnvelopeError("bad envelope")
    sig_hex = line[-tail + len(SIG_PREFIX):-tail + len(SIG_PREFIX) + 128]
    if not _HEX_RE.fullmatch(sig_hex):
        raise EnvelopeError("signature is not 128 lowercase hex digits")
    return line[len(BODY_PREFIX):-tail], hybrid.Signatures(bytes.fromhex(sig_hex.decode()), mldsa)


def join(body: bytes, signatures: hybrid.Signatures) -> bytes:
    """The line (without LF) for a signed body: version 1, or version 2 when there is an ML-DSA-65 signature."""
    line = BODY_PREFIX + body + SIG_PREFIX + signatures.ed25519.hex().encode()
    if signatures.mldsa65 is not None:
        line += MLDSA_PREFIX + base64.b64encode(signatures.mldsa65)
    return line + SUFFIX
