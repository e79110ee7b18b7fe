"""Start-up recovery: close segments a power cut left open, keep everything verifiable.

A power cut can leave (a) a manifest written but the chain head not yet
advanced, (b) a manifest temp file fsync'd but not renamed, (c) a segment
with no manifest whose last record is torn. Recovery rolls the chain head
forward for (a), promotes a valid (b), and for (c) drops only the torn tail
and signs a manifest with the ``recovered`` flag over the complete chunks.
The sealer's data key died with the process, so a recovered segment has no
final chunk; its manifest is what bounds it.
"""

from __future__ import annotations

import errno
import logging
import os

from cryptography.exceptions import InvalidSignature

from secure_store import hybrid, keys
from secure_store.audit_format import Event, audit_files, parse_line, read_audit_file
from secure_store.chain import ChainHead
from secure_store.durable import fsync_dir
from secure_store.errors import FormatError, TornRecordError
from secure_store.format import Manifest, iter_records, read_header, sha256
from secure_store.reserve import is_no_space
from secure_store.sealer import MANIFEST_SUFFIX, SEGMENT_SUFFIX, SealingStore, SegmentTally, seal_manifest, segment_stem

log = logging.getLogger(__name__)


def recover_torn(store: SealingStore) -> list[str]:
    """Run every recovery step; returns names of segments sealed with the recovered flag.

    Each step reads and decides first, then writes only what it must, and every write
    may draw on the sealing reserve. A write that still finds no room (or a read-only
    file system) ends recovery without an error: the device must still boot, so that a
    dock can take the sealed footage and free space. ``store.recovery_pending`` then
    says that a torn segment waits; ``EvidenceStore.recover_pending`` finishes the job.
    """
    evidence = store.root.evidence
    recovered: list[str] = []
    if store.head_dirty and not store.save_chain_head():
        return recovered  # still no room for the chain head: nothing else may be written before it
    try:
        _promote_temp_manifests(store)
        _roll_head_forward(store)
        _log_unlogged_seal(store)
        for segment in sorted(evidence.glob("seg-*" + SEGMENT_SUFFIX)):
            if segment.with_suffix(MANIFEST_SUFFIX).exists():
                continue
            name = _recover_segment(store, segment)
            if name:
                recovered.append(name)
    except Exception as exc:  # noqa: BLE001 - only "no room to write" is let through, below
        if not (is_no_space(exc) or getattr(exc, "errno", None) == errno.EROFS):
            raise
        if not store.recovery_pending:  # said once, not at every retry
            log.error("recovery: no room to seal a torn segment (%s); booting without it, "
                      "it is sealed once the dock frees space", exc)
            store.audit.append("power_recovery", pending=True, reason=f"no room to write: {exc}")
        store.recovery_pending = True
        return recovered
    store.recovery_pending = store.head_dirty
    return recovered


def _load_manifest(store: SealingStore, path) -> Manifest | None:
    """A manifest at ``path`` if it parses and carries this device's signature."""
    try:
        data = path.read_bytes()
        manifest = Manifest.parse(data, path.name)
        key = hybrid.as_verify_key(store.signing_key.public_key())
        if key.hybrid != manifest.hybrid:  # no downgrade: a hybrid key's manifests carry both signatures
            return None
        key.verify(manifest.signatures, manifest.signed_bytes())
        return manifest
    except (OSError, FormatError, InvalidSignature):
        return None


def _promote_temp_manifests(store: SealingStore) -> None:
    for tmp in sorted(store.root.evidence.glob(".seg-*" + MANIFEST_SUFFIX + ".tmp-*")):
        final = tmp.parent / tmp.name[1:tmp.name.index(".tmp-")]
        manifest = _load_manifest(store, tmp)
        if manifest and not final.exists() and final.stem == segment_stem(manifest.segment_seq):
            os.rename(tmp, final)
            fsync_dir(final.parent)
            log.warning("recovery: promoted fully written manifest %s", final.name)
        else:
            tmp.unlink()


def _roll_head_forward(store: SealingStore) -> None:
    """Advance the persisted chain head over manifests sealed just before the power cut."""
    head = store.chain_head
    while True:
        path = store.root.evidence / (segment_stem(head.next_seq) + MANIFEST_SUFFIX)
        manifest = _load_manifest(store, path) if path.exists() else None
        if manifest is None or manifest.prev_digest != head.digest:
            break
        head = ChainHead(manifest.segment_seq, manifest.digest)
    if head != store.chain_head:
        log.warning("recovery: chain head advanced from %d to %d", store.chain_head.seq, head.seq)
        store.chain_head = head
        store.save_chain_head()


def _newest_sealed_in_log(store: SealingStore) -> int:
    """The seq of the newest ``segment_sealed`` entry (0: none), reading the newest file first."""
    for _, path in reversed(audit_files(store.audit.directory)):
        lines, _ = read_audit_file(path)
        for n, line in reversed(list(enumerate(lines, start=2))):
            entry = parse_line(line, path.name, n)[0]
            if entry.event == Event.SEGMENT_SEALED:
                return entry.details["seq"]
    return 0


def _log_unlogged_seal(store: SealingStore) -> None:
    """A power cut between a manifest's rename and its ``segment_sealed`` entry: write the entry now.

    Verifiers require every present segment to have its entry (FORMAT.md, A3), so the gap is
    closed at boot, marked ``late``, with the digest of the manifest that is on disk.
    """
    head = store.chain_head
    path = store.root.evidence / (segment_stem(head.seq) + MANIFEST_SUFFIX)
    if head.seq < 1 or not path.exists() or _newest_sealed_in_log(store) >= head.seq:
        return
    manifest = _load_manifest(store, path)
    if manifest is None or manifest.digest != head.digest:
        return
    store.audit.append("segment_sealed", segment=path.stem, seq=head.seq, recording_id=manifest.recording_id,
                       index=manifest.index, chunks=len(manifest.chunk_digests), frames=manifest.frame_count,
                       recovered=manifest.recovered, manifest_sha256=head.digest.hex(), late=True)
    log.warning("recovery: logged the sealing of %s, cut off by a power loss", path.stem)


def _recover_segment(store: SealingStore, segment) -> str | None:
    stem = segment.stem
    with open(segment, "rb") as f:
        try:
            header, raw = read_header(f, segment.name)
        except FormatError as exc:
            return _set_aside(store, segment, f"header unreadable: {exc}")
        device_fp = sha256(keys.raw_public(store.signing_key.public_key()))
        if header.device_key_fp != device_fp or stem != segment_stem(header.segment_seq):
            return _set_aside(store, segment, "header names another device key or sequence number")
        if header.segment_seq != store.chain_head.next_seq:
            return _set_aside(store, segment, f"sequence {header.segment_seq} does not follow "
                                              f"chain head {store.chain_head.seq}")
        tally = SegmentTally()
        records = []
        good_end = len(raw)
        try:
            for record in iter_records(f, len(raw), segment.name):
                records.append(record)
        except TornRecordError as exc:
            good_end = exc.good_end
        else:
            good_end = f.seek(0, os.SEEK_END)
        if records and records[-1].digest != records[-1].stored_digest:
            # A complete-looking last record that does not match its own digest is a torn write.
            good_end = records.pop().offset
        for record in records:
            tally.add(record.meta, record.stored_digest)
    size = segment.stat().st_size
    dropped = size - good_end
    if dropped:
        with open(segment, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
        store.note_written(-dropped)
    seal_manifest(store, header, sha256(raw), tally, (), recovered=True, storage_full=False)
    store.audit.append("power_recovery", segment=stem, chunks_kept=len(records), bytes_dropped=dropped,
                       frames_kept=tally.frame_count)
    log.warning("recovery: sealed torn %s with %d chunks, dropped %d torn bytes", stem, len(records), dropped)
    return stem


def _set_aside(store: SealingStore, segment, reason: str) -> None:
    """Keep a segment recovery cannot seal under a name no listing treats as evidence."""
    target = segment.with_name(segment.name + ".unsealed")
    os.rename(segment, target)
    fsync_dir(segment.parent)
    store.audit.append("power_recovery", segment=segment.stem, set_aside=target.name, reason=reason)
    log.error("recovery: set %s aside: %s", segment.name, reason)
    return None
