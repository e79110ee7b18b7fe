"""The canonical-JSON and receipt vectors in docs/FORMAT.md hold for the one strict reader."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from secure_store import strict_json
from secure_store.errors import FormatError
from secure_store.receipts import parse_receipt, write_receipt

FORMAT = (Path(__file__).resolve().parents[2] / "docs" / "FORMAT.md").read_text(encoding="utf-8")
BLOCK = FORMAT.split("<!-- json-vectors:begin -->")[1].split("<!-- json-vectors:end -->")[0]
VECTORS = [line.split(" ", 1) for line in BLOCK.splitlines() if line.startswith(("accept ", "refuse "))]


@pytest.mark.parametrize("verdict, rest", VECTORS, ids=[r for _, r in VECTORS])
def test_json_vector(verdict: str, rest: str) -> None:
    body = rest.split(" J")[0].encode("utf-8")
    if verdict == "accept":
        value = strict_json.loads(body)
        assert strict_json.dumps(value) == body  # canonical: the writer gives back the same bytes
    else:
        with pytest.raises(strict_json.StrictJSONError):
            strict_json.loads(body)


def test_receipt_vector(tmp_path) -> None:
    line = FORMAT.split("<!-- receipt-vector -->")[1].split("```text\n")[1].split("\n```")[0].encode()
    digest = re.search(r"next receipt's `prev`\) is\s+`([0-9a-f]{64})`", FORMAT).group(1)
    receipt = parse_receipt(line + b"\n", 1, "vector")
    assert receipt.digest == digest == hashlib.sha256(line).hexdigest()
    assert receipt.manifests == ((7, "46a0b8497ed778717de803a429fc2890138d11124c088067dc3b39a679f32b89"),)
    dock = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(0x40, 0x60)))
    written = write_receipt(tmp_path, dock, receipt.device_id, receipt.device_key, "", receipt.audit_head,
                            receipt.manifests, utc=receipt.utc)
    assert written.read_bytes() == line + b"\n"  # the writer makes exactly the vector's bytes
    with pytest.raises(FormatError, match="signature"):
        parse_receipt(line.replace(b'"seq":7', b'"seq":8') + b"\n", 1, "vector")
