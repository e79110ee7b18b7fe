"""Export straight from the evidence store (``bodycam export s3://BUCKET/PREFIX/DEVICE``).

The device's objects are streamed into a private temporary directory (ciphertext only:
segments are encrypted to the agency; removed when done) and exported by the one exporter,
``export_evidence``, with all its options, so an export from the bucket is the very export a
dock's disk would give.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from secure_store.sources import EvidenceSource, staged

from export import exporter


def export_from_source(source: EvidenceSource, agency_key: Any, out_dir: Path, device_key: Any = None,
                       **options: Any) -> exporter.ExportResult:
    """``export_evidence`` (``options``: signer, trust_root, best_effort) on a source's files."""
    with staged(source) as root:
        return exporter.export_evidence(root, agency_key, Path(out_dir), device_key, **options)
