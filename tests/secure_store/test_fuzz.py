"""Hypothesis fuzzing of every evidence parser: malformed input is a clear error, never a crash or hang."""

from __future__ import annotations

import io
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from secure_store import keys
from secure_store.errors import FormatError, StoreError
from secure_store.format import (
    MAX_RECORD_BODY, SEGMENT_MAGIC, Manifest, SegmentHeader, iter_records, read_header,
)
from secure_store.trust import parse_identity
from secure_store.verify import verify_segment

FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)


@pytest.fixture(scope="module")
def sample(tmp_path_factory, keyset, h) -> dict[str, bytes]:
    root = h.provision_root(tmp_path_factory.mktemp("fuzz") / "device", keyset)
    store = h.open_store(root, keyset)
    sealer = store.open_sealer()
    sealer.begin_segment("rec-1", 0)
    sealer.write_chunk(h.gop(0, 3, 50))
    sealer.add_marker(5, "marker ✓")
    sealer.write_chunk(h.gop(3, 2, 50))
    sealer.end_segment()
    return {"segment": (root.evidence / "seg-0000000001.seg").read_bytes(),
            "manifest": (root.evidence / "seg-0000000001.manifest").read_bytes(),
            "identity": root.identity.read_bytes(), "pub": root.device_pub.read_bytes(),
            "key": root.device_key.read_bytes()}


def mutations(data: bytes):
    """Byte flips, truncations, insertions and deletions of a valid file."""
    n = len(data)
    return st.one_of(
        st.tuples(st.integers(0, n - 1), st.integers(1, 255)).map(
            lambda t: data[:t[0]] + bytes([data[t[0]] ^ t[1]]) + data[t[0] + 1:]),
        st.integers(0, n - 1).map(lambda i: data[:i]),
        st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=8)).map(lambda t: data[:t[0]] + t[1] + data[t[0]:]),
        st.tuples(st.integers(0, n - 1), st.integers(1, 16)).map(lambda t: data[:t[0]] + data[t[0] + t[1]:]),
    )


def parse_segment(data: bytes) -> int:
    f = io.BytesIO(data)
    _, raw = read_header(f)
    return sum(1 for _ in iter_records(f, len(raw)))


@FUZZ
@given(data=st.data())
def test_manifest_parser_mutations(sample, data) -> None:
    blob = data.draw(st.one_of(mutations(sample["manifest"]), st.binary(max_size=600)))
    try:
        m = Manifest.parse(blob)
    except FormatError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert m.encode() == blob  # only the one canonical encoding parses


@FUZZ
@given(data=st.data())
def test_segment_parser_mutations(sample, data) -> None:
    blob = data.draw(st.one_of(mutations(sample["segment"]), st.binary(max_size=600),
                               st.binary(max_size=200).map(lambda b: SEGMENT_MAGIC + b"\x00\x01" + b)))
    try:
        parse_segment(blob)
    except FormatError as exc:
        assert str(exc) and "\n" not in str(exc)


@FUZZ
@given(data=st.data())
def test_verifier_on_mutated_evidence_reports_problems(sample, data, tmp_path_factory, keyset) -> None:
    d = tmp_path_factory.mktemp("v")
    which = data.draw(st.sampled_from(["segment", "manifest"]))
    seg, man = d / "seg-0000000001.seg", d / "seg-0000000001.manifest"
    seg.write_bytes(sample["segment"])
    man.write_bytes(sample["manifest"])
    blob = data.draw(mutations(sample[which]))
    (seg if which == "segment" else man).write_bytes(blob)
    _, problems = verify_segment(seg, keyset.device.public_key())
    if blob != sample[which]:
        assert problems and all(p.reason for p in problems)


def test_huge_lengths_do_not_allocate(sample) -> None:
    header_len = struct.unpack(">H", sample["segment"][10:12])[0]
    hostile = sample["segment"][:header_len] + struct.pack(">I", 0xFFFFFFFF) + b"x" * 10
    with pytest.raises(FormatError, match="impossible length"):
        parse_segment(hostile)
    hostile = sample["segment"][:header_len] + struct.pack(">I", MAX_RECORD_BODY) + b"x" * 10
    with pytest.raises(FormatError, match="cut short"):
        parse_segment(hostile)
    m = sample["manifest"]
    with pytest.raises(FormatError):
        Manifest.parse(m[:10] + struct.pack(">I", 0xFFFFFFFF) + m[14:])


def test_unknown_versions_refused_clearly(sample) -> None:
    for blob, parse, version in ((sample["segment"], parse_segment, 2), (sample["manifest"], Manifest.parse, 4)):
        with pytest.raises(FormatError, match=f"format version {version} is not supported"):
            parse(blob[:8] + struct.pack(">H", version) + blob[10:])
    header_len = struct.unpack(">H", sample["segment"][10:12])[0]
    with pytest.raises(FormatError, match="unknown cipher suite"):
        SegmentHeader.parse(sample["segment"][:12] + b"\x00\x03" + sample["segment"][14:header_len])
    with pytest.raises(FormatError, match="wrapped_key must be 1168 bytes for suite 2"):  # suite 1's key, relabelled
        SegmentHeader.parse(sample["segment"][:12] + b"\x00\x02" + sample["segment"][14:header_len])


@FUZZ
@given(data=st.data())
def test_key_and_identity_parsers(sample, data, tmp_path_factory) -> None:
    which = data.draw(st.sampled_from(["identity", "pub", "key"]))
    blob = data.draw(st.one_of(mutations(sample[which]), st.binary(max_size=300)))
    if which == "identity":
        try:
            parse_identity(blob)
        except FormatError as exc:
            assert "\n" not in str(exc)
        return
    path = tmp_path_factory.mktemp("k") / "f.pem"
    path.write_bytes(blob)
    loader = keys.load_public_key if which == "pub" else keys.load_private_key
    try:
        loader(path, "device")
    except keys.KeyFileError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(doc=st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                        max_leaves=10))
def test_identity_json_structures(doc) -> None:
    import json
    with pytest.raises(FormatError):
        parse_identity(json.dumps({"device_id": doc, "public_key_pem": doc}).encode())


def test_store_errors_are_store_errors() -> None:
    assert issubclass(FormatError, StoreError) and FormatError.exit_code == 1
