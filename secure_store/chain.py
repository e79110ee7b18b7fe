"""The device's manifest chain head: last sealed segment number and manifest digest.

Kept durably in ``state/evidence_chain.json`` so the chain survives reboots and
the release (deletion after offload) of every segment it covers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from secure_store.durable import write_atomic
from secure_store.errors import FormatError
from secure_store.format import ZERO_DIGEST

CHAIN_FILE = "evidence_chain.json"


@dataclass(frozen=True)
class ChainHead:
    """``seq`` of the last sealed segment (0: none yet) and its manifest digest."""

    seq: int = 0
    digest: bytes = ZERO_DIGEST

    @property
    def next_seq(self) -> int:
        return self.seq + 1


def load_head(state_dir: Path) -> ChainHead:
    path = Path(state_dir) / CHAIN_FILE
    try:
        data = json.loads(path.read_text())
        head = ChainHead(int(data["seq"]), bytes.fromhex(data["digest"]))
    except FileNotFoundError:
        return ChainHead()
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"{path}: chain head unreadable ({exc})") from None
    if head.seq < 0 or len(head.digest) != 32:
        raise FormatError(f"{path}: chain head out of range")
    return head


def save_head(state_dir: Path, head: ChainHead) -> None:
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"seq": head.seq, "digest": head.digest.hex()}, sort_keys=True)
    write_atomic(state_dir / CHAIN_FILE, text.encode() + b"\n", 0o644)
