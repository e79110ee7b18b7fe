"""Export straight from the evidence store (``bodycam export s3://BUCKET/PREFIX/DEVICE``).

The one exporter, ``export_evidence``, with all its options, reads the source through
``secure_store.sources.SourcePath``: segments by ranged GETs, small objects into memory,
nothing copied to disk but the export itself. So an export from the bucket is the very
export a dock's disk would give.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from secure_store.sources import EvidenceSource, SourcePath

from export import exporter


def export_from_source(source: EvidenceSource, agency_key: Any, out_dir: Path, device_key: Any = None,
                       **options: Any) -> exporter.ExportResult:
    """``export_evidence`` (``options``: signer, trust_root, best_effort) read straight from a source."""
    return exporter.export_evidence(SourcePath(source), agency_key, Path(out_dir), device_key, **options)
