"""Hostile peers on a real link: each test is the attack one evidence-protecting check stops.

The peers are built from the real protocol code (link.session, link.protocol, dock.client,
firmware.offload), changed only where the attacker differs: a dock that knows an enrolled
dock's public key but not its private key, a device that signs with a key it does not
own, a device that lists hostile names, lies about hashes or sends its bytes with a gap.
Each test asserts what must not happen (evidence released, a file written outside the
archive, a forged file archived) and names the check it guards in its docstring.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from dock.client import DockClient, PullError, pull
from firmware.offload import CommandError
from hw_sim.link import LinkedPtys
from link.protocol import FrameDecoder, FrameType, encode_frame
from link.session import AuthError

DEVICE_ID = "CAM-0042"


class Impostor:
    """Presents one Ed25519 public key and signs with another private key.

    What an attacker has who copied an enrolled dock's (or the device's) public key, which
    is no secret: it goes out in every handshake.
    """

    def __init__(self, claimed_public, signing_key) -> None:
        self._public, self._signer = claimed_public, signing_key

    def public_key(self):
        return self._public

    def sign(self, data: bytes) -> bytes:
        return self._signer.sign(data)


def _files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*") if p.is_file()}


# --- who is on the other end ---------------------------------------------------------------

def test_dock_with_an_enrolled_public_key_but_not_its_private_key_is_refused(device, keyset):
    """Guards the device's check of the dock's AUTH signature (link.session.device_handshake)."""
    device.record(segments=1)
    before = device.evidence()
    impostor = Impostor(keyset.dock.public_key(), keyset.stranger)
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        with pytest.raises(AuthError):
            DockClient.connect(cable.b_path, impostor, handshake_timeout=10.0)
        served.join()
    assert isinstance(served.error, AuthError)
    events = [e.event for e in device.events()]
    assert "dock_auth_failed" in events and "offload_start" not in events
    assert device.evidence() == before


def test_device_that_cannot_sign_for_the_key_it_presents_is_refused(device, keyset, tmp_path):
    """Guards the dock's check of the device's HELLO_REPLY signature (link.session.dock_handshake).

    The impostor presents the real device's public key (so even a pinned identity matches)
    but signs with a key of its own: it must get neither a session nor the dock's AUTH.
    """
    device.record(segments=1)
    out = tmp_path / "archive"
    with LinkedPtys() as cable:
        server = device.server(cable.a_path)
        server.device_key = Impostor(keyset.device.public_key(), keyset.stranger)
        served = device.serve_with(server, wait=10.0)
        with pytest.raises(AuthError, match="signature"):
            pull(cable.b_path, out, keyset.dock, handshake_timeout=10.0)
        cable.unplug()
        served.join()
    assert not (out / DEVICE_ID).exists()
    assert "offload_start" not in [e.event for e in device.events()]


# --- what a hostile device lists and sends ---------------------------------------------------

class HostileServer:
    """Wraps a real OffloadServer's command table: extra listed items, lying answers."""

    def __init__(self, server, extra_items=(), lie_sha256=None, fetch=None) -> None:
        self.server = server
        self.extra = list(extra_items)
        self.lie = lie_sha256 or {}
        self.real_list, self.real_fetch = server.commands["list"], server.commands["fetch"]
        self.fetch_override = fetch
        self.fetches: list[tuple[str, int, int]] = []
        server.add_command("list", self.list)
        server.add_command("fetch", self.fetch)

    def list(self, request):
        reply = self.real_list(request)
        for item in reply["items"]:
            if item["name"] in self.lie:
                item["sha256"] = self.lie[item["name"]]
        reply["items"] += [{k: v for k, v in i.items() if k != "data"} for i in self.extra]
        return reply

    def fetch(self, request):
        name, offset, length = request.args["name"], request.args["offset"], request.args["length"]
        self.fetches.append((name, offset, length))
        if self.fetch_override is not None:
            reply = self.fetch_override(request)
            if reply is not None:
                return reply
        for item in self.extra:
            if item["name"] == name:
                data = item["data"][offset:offset + length]
                request.send_chunk(offset, data)
                return {"name": name, "offset": offset, "length": len(data), "size": item["size"]}
        return self.real_fetch(request)


def _pull_over_a_cable(device, out: Path, dock_key, **options):
    """One honest pull of ``device`` over a fresh cable; its summary."""
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        summary = pull(cable.b_path, out, dock_key, **options)
        served.join()
    return summary


def _item(name: str, kind: str, data: bytes) -> dict:
    return {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "kind": kind, "data": data}


def test_hostile_names_in_the_listing_write_nothing_outside_the_archive(device, keyset, tmp_path):
    """Guards the dock's name filter: a listed name is a path under OUT/<device_id>/."""
    device.record(segments=1)
    out = tmp_path / "archive"
    out.mkdir()
    payload = b"planted by a hostile device\n"
    hostile = [
        _item("audit/../../x", "audit", payload),
        _item("audit/../../../escaped", "audit", payload),
        _item("../seg-0000000099.seg", "segment", payload),
        _item("../seg-0000000099.manifest", "manifest", payload),
        _item(str(tmp_path / "seg-0000000098.seg"), "segment", payload),
        _item("evidence/../../seg-0000000097.seg", "segment", payload),
    ]
    with LinkedPtys() as cable:
        server = device.server(cable.a_path)
        hostile_server = HostileServer(server, hostile)
        served = device.serve_with(server)
        summary = pull(cable.b_path, out, keyset.dock)
        served.join()
    device_dir = out / DEVICE_ID
    assert _files_under(tmp_path / "archive") <= _files_under(device_dir)
    assert not (tmp_path / "x").exists() and not (tmp_path / "escaped").exists()
    assert all(payload not in p.read_bytes() for p in _files_under(device_dir))
    fetched_names = {name for name, _, _ in hostile_server.fetches}
    assert fetched_names.isdisjoint(i["name"] for i in hostile)   # never even asked for
    assert summary.confirmed == ["seg-0000000001.seg"]            # the genuine evidence still flows


def test_bytes_that_do_not_hash_as_listed_are_never_archived_or_confirmed(device, keyset, tmp_path):
    """Guards the dock's check of each download against the listed SHA-256."""
    device.record(segments=2)
    before = device.evidence()
    manifest = "seg-0000000002.manifest"
    forged = hashlib.sha256(b"not what the device holds").hexdigest()
    out = tmp_path / "archive"
    with LinkedPtys() as cable:
        server = device.server(cable.a_path)
        HostileServer(server, lie_sha256={manifest: forged})
        served = device.serve_with(server)
        summary = pull(cable.b_path, out, keyset.dock)
        served.join()
    evidence = out / DEVICE_ID / "evidence"
    assert not (evidence / manifest).exists()
    assert not list(evidence.glob(".*.part"))                    # the mismatching copy was discarded
    assert any(manifest in p for p in summary.problems)
    assert summary.confirmed == ["seg-0000000001.seg"]
    assert device.evidence()[manifest] == before[manifest]       # seg 2 stays on the camera
    assert "seg-0000000002.seg" in device.evidence()


@pytest.mark.parametrize("attack", ["gap", "repeat", "backwards"])
def test_chunks_out_of_place_are_refused(device, keyset, attack):
    """Guards the dock's check that CHUNK offsets are contiguous (no gap, no overlap)."""
    device.record(segments=1, chunks=2, frame_bytes=20_000)
    name = "seg-0000000001.seg"
    data = device.evidence()[name]
    step = 4096

    def out_of_place(request):
        offset = request.args["offset"]
        positions = {"gap": [offset, offset + 2 * step],
                     "repeat": [offset, offset],
                     "backwards": [offset + step, offset]}[attack]
        for position in positions:
            request.send_chunk(position, data[position:position + step])
        return {"name": name, "offset": offset, "length": 2 * step, "size": len(data)}

    with LinkedPtys() as cable:
        server = device.server(cable.a_path)
        HostileServer(server, fetch=out_of_place)
        served = device.serve_with(server)
        got = bytearray()
        with DockClient.connect(cable.b_path, keyset.dock) as client:
            client.list_evidence()
            with pytest.raises(PullError):
                client.fetch(name, 0, 3 * step, got.extend)
        served.join()
    assert bytes(got) == data[:len(got)]            # whatever was taken was the file's own prefix
    assert len(got) <= step


def test_resume_asks_only_for_the_missing_bytes(device, keyset, tmp_path):
    """Guards the resume offset: a kept ``.part`` of K bytes makes the dock fetch from byte K."""
    device.record(segments=2, chunks=3, frame_bytes=8000)
    before = device.evidence()
    name = "seg-0000000002.seg"
    kept = len(before[name]) // 3 + 7
    evidence = tmp_path / "archive" / DEVICE_ID / "evidence"
    evidence.mkdir(parents=True)
    (evidence / f".{name}.part").write_bytes(before[name][:kept])
    with LinkedPtys() as cable:
        server = device.server(cable.a_path)
        hostile = HostileServer(server)     # a faithful device; the wrapper only records fetches
        served = device.serve_with(server)
        summary = pull(cable.b_path, tmp_path / "archive", keyset.dock)
        served.join()
    assert summary.ok, summary.problems
    assert summary.bytes_resumed == kept
    asked = [(offset, length) for n, offset, length in hostile.fetches if n == name]
    assert asked == [(kept, len(before[name]) - kept)]
    assert (evidence / name).read_bytes() == before[name]


def test_a_segment_that_fails_verification_is_never_confirmed(device, keyset, tmp_path):
    """Guards ``if name in bad: continue`` in the dock's confirm loop.

    The device's own copy of segment 2 is damaged (one ciphertext byte), and it lists and
    sends the damaged bytes faithfully, so the download itself is fine. The manifest is
    intact, so a confirm would release the segment: the only copy of that evidence.
    """
    device.record(segments=3)
    path = device.store.evidence_path("seg-0000000002.seg")
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    out = tmp_path / "archive"
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        summary = pull(cable.b_path, out, keyset.dock)
        served.join()
    assert "seg-0000000002.seg" not in summary.confirmed and "seg-0000000002.seg" not in summary.verified
    assert any("seg-0000000002" in p for p in summary.problems)
    assert "seg-0000000002.seg" in device.evidence()              # the camera keeps it
    assert summary.confirmed == ["seg-0000000001.seg", "seg-0000000003.seg"]
    confirms = [e.details["segment"] for e in device.events() if e.event == "offload_confirm"]
    assert "seg-0000000002.seg" not in confirms


# --- the frame layer ---------------------------------------------------------------------------

def test_a_frame_with_a_damaged_header_is_dropped_not_misread():
    """Guards the header CRC: a flipped bit in type or seq must not yield a frame of another type/seq.

    The payload CRC does not cover the header, so without the header CRC the decoder would
    take a HELLO for an AUTH, or DATA 7 for DATA 6, with an intact payload.
    """
    first = encode_frame(FrameType.DATA, 6, b"segment bytes")
    second = encode_frame(FrameType.DATA, 7, b"next frame")
    for position, bit in ((2, 0x02), (7, 0x01)):    # type byte; low byte of seq
        damaged = bytearray(first)
        damaged[position] ^= bit
        decoder = FrameDecoder()
        frames = decoder.feed(bytes(damaged) + second)
        assert [(f.type, f.seq, f.payload) for f in frames] == [(FrameType.DATA, 7, b"next frame")]
        assert decoder.bad_headers >= 1


# --- what the dock holds already, and what the device refuses --------------------------------

def test_a_fork_spliced_in_after_an_earlier_pull_is_not_confirmed(device, keyset, tmp_path, make_device):
    """Guards the dock's chain check across pulls: the first new segment must follow the
    last one the dock already holds, though the device released that one long ago.

    The device pulled once (segment 1 archived and released). Then segment 2 of a fork of
    the same device key (a copy of its store, before segment 1) is planted on the device:
    valid signature, the right sequence number, the wrong previous-manifest digest.
    """
    import shutil
    fork = make_device()
    device.record(segments=1)
    fork.record(segments=2)                        # same key: its own segment 1, then 2
    out = tmp_path / "archive"
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        first = pull(cable.b_path, out, keyset.dock)
        served.join()
    assert first.confirmed == ["seg-0000000001.seg"] and device.evidence() == {}
    for name in ("seg-0000000002.seg", "seg-0000000002.manifest"):
        shutil.copyfile(fork.store.evidence_path(name), device.root.evidence / name)
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        second = pull(cable.b_path, out, keyset.dock)
        served.join()
    assert second.confirmed == [] and second.verified == []
    assert any("seg-0000000002" in p for p in second.problems)
    assert "seg-0000000002.seg" in device.evidence()


def test_a_chain_broken_on_the_device_stops_the_confirms_at_the_break(device, keyset, tmp_path, make_device):
    """Guards the dock's chain check within one pull: segments 1 and 2 are the device's own,
    segment 2 was then replaced by a fork's (same key, forked after 1), so segment 3 no
    longer follows it. Every file verifies on its own; only the chain shows the splice."""
    import shutil
    device.record(segments=1)
    fork = make_device()
    shutil.rmtree(fork.root.root)
    shutil.copytree(device.root.root, fork.root.root)
    fork.store.chain_head = device.store.chain_head
    device.record(segments=2)
    fork.next_frame = 10_000
    fork.record(segments=1)                        # the fork's segment 2
    for name in ("seg-0000000002.seg", "seg-0000000002.manifest"):
        target = device.root.evidence / name
        target.chmod(0o644)
        shutil.copyfile(fork.root.evidence / name, target)
    out = tmp_path / "archive"
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        summary = pull(cable.b_path, out, keyset.dock)
        served.join()
    assert "seg-0000000003.seg" not in summary.confirmed
    assert any("seg-0000000003" in p and "chain" in p for p in summary.problems)
    assert "seg-0000000003.seg" in device.evidence()


def test_segments_naming_another_device_id_are_not_confirmed(tmp_path, keyset, make_device):
    """Guards the device-ID check in the dock's verification: the session says CAM-0042,
    the manifests (signed with the same key) say another camera's ID."""
    device = make_device()
    from secure_store.store import EvidenceStore
    device.store = EvidenceStore(device.root, device_id="CAM-0099", signing_key=keyset.device,
                                 agency_public_key=keyset.agency.public_key(), audit=device.audit,
                                 clock=device.clock, reserve_bytes=0)
    device.record(segments=1)
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        summary = pull(cable.b_path, tmp_path / "archive", keyset.dock)
        served.join()
    assert summary.confirmed == []
    assert any("another device" in p for p in summary.problems)
    assert "seg-0000000001.seg" in device.evidence()


def test_a_refused_confirm_is_reported_and_not_counted(device, keyset, tmp_path):
    """The device may refuse a confirm (its copy changed, its disk failed): the dock says so."""
    device.record(segments=2)

    with LinkedPtys() as cable:
        server = device.server(cable.a_path)
        real_confirm = server.commands["confirm"]

        def confirm(request):
            if request.args.get("segment") == "seg-0000000002.seg":
                raise CommandError("not today", "release_refused")
            return real_confirm(request)

        server.add_command("confirm", confirm)
        served = device.serve_with(server)
        summary = pull(cable.b_path, tmp_path / "archive", keyset.dock)
        served.join()
    assert summary.confirmed == ["seg-0000000001.seg"]
    assert summary.verified == ["seg-0000000001.seg", "seg-0000000002.seg"]
    assert [p for p in summary.problems if "seg-0000000002.seg" in p and "not today" in p]
    assert "seg-0000000002.seg" in device.evidence()


def test_a_rerun_after_an_unconfirmed_pull_fetches_no_segment_twice(device, keyset, tmp_path):
    device.record(segments=2)
    out = tmp_path / "archive"
    _pull_over_a_cable(device, out, keyset.dock, confirm=False)
    summary = _pull_over_a_cable(device, out, keyset.dock)
    assert summary.ok, summary.problems
    assert sorted(summary.skipped) == sorted(device_names := [
        "seg-0000000001.seg", "seg-0000000001.manifest", "seg-0000000002.seg", "seg-0000000002.manifest"])
    assert not [n for n in summary.fetched if n in device_names]
    assert summary.confirmed == ["seg-0000000001.seg", "seg-0000000002.seg"]


@pytest.mark.parametrize("reason, shown", [
    (b"", "no reason given"),
    (b"bad \xff\xfe dock", "bad \ufffd\ufffd dock"),
    (b"r" * 300, "r" * 200),
])
def test_a_device_rejecting_the_dock_says_why_in_one_line(reason, shown, keyset):
    """A REJECT's payload is untrusted bytes: decoded leniently and cut to 200 characters."""
    from link.transport import Link, open_port
    with LinkedPtys() as cable:
        device_end = Link(open_port(cable.a_path))
        try:
            with pytest.raises(AuthError) as refused:
                import threading

                def reject() -> None:
                    frame = device_end.next_handshake_frame(10.0)
                    if frame is not None:
                        device_end.send_frame(FrameType.REJECT, reason)

                threading.Thread(target=reject, daemon=True).start()
                DockClient.connect(cable.b_path, keyset.dock, handshake_timeout=10.0)
        finally:
            device_end.close(flush_timeout=0)
    message = str(refused.value)
    assert message.endswith(": " + shown) and "r" * 201 not in message


def test_a_held_copy_that_differs_is_left_alone_and_reported(device, keyset, tmp_path):
    """The dock never overwrites evidence it holds with different bytes under the same name."""
    device.record(segments=1)
    evidence = tmp_path / "archive" / DEVICE_ID / "evidence"
    evidence.mkdir(parents=True)
    (evidence / "seg-0000000001.seg").write_bytes(b"an older, different copy")
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        summary = pull(cable.b_path, tmp_path / "archive", keyset.dock)
        served.join()
    assert (evidence / "seg-0000000001.seg").read_bytes() == b"an older, different copy"
    assert [p for p in summary.problems if p.startswith("seg-0000000001.seg: the dock's copy differs")]
    assert summary.confirmed == [] and "seg-0000000001.seg" in device.evidence()


@pytest.mark.parametrize("part", ["complete", "oversized"])
def test_a_part_file_already_complete_or_too_long(device, keyset, tmp_path, part):
    """A .part as long as the file needs no fetch; one longer than listed is fetched again from 0."""
    device.record(segments=1)
    before = device.evidence()
    name = "seg-0000000001.seg"
    evidence = tmp_path / "archive" / DEVICE_ID / "evidence"
    evidence.mkdir(parents=True)
    (evidence / f".{name}.part").write_bytes(before[name] + (b"junk" if part == "oversized" else b""))
    with LinkedPtys() as cable:
        server = device.server(cable.a_path)
        hostile = HostileServer(server)
        served = device.serve_with(server)
        summary = pull(cable.b_path, tmp_path / "archive", keyset.dock)
        served.join()
    assert summary.ok, summary.problems
    assert (evidence / name).read_bytes() == before[name]
    asked = [(offset, length) for n, offset, length in hostile.fetches if n == name]
    if part == "complete":
        assert summary.bytes_resumed == len(before[name]) and asked in ([], [(len(before[name]), 0)])
    else:
        assert summary.bytes_resumed == 0 and asked == [(0, len(before[name]))]


def test_a_fetch_the_device_refuses_is_reported(device, keyset, tmp_path):
    device.record(segments=1)

    def refuse(request):
        if request.args["name"] == "seg-0000000001.seg":
            raise CommandError("read error on the card", "failed")
        return None

    with LinkedPtys() as cable:
        server = device.server(cable.a_path)
        HostileServer(server, fetch=refuse)
        served = device.serve_with(server)
        summary = pull(cable.b_path, tmp_path / "archive", keyset.dock)
        served.join()
    assert [p for p in summary.problems if p.startswith("seg-0000000001.seg: ") and "read error on the card" in p]
    assert summary.confirmed == [] and "seg-0000000001.seg" in device.evidence()


@pytest.mark.parametrize("lied_about", ["seg-0000000001.seg", "seg-0000000001.manifest"])
def test_a_segment_the_device_lists_otherwise_than_the_docks_copy_is_never_confirmed(device, keyset, tmp_path,
                                                                                     lied_about):
    """Guards the pull's pairing: a segment is verified and confirmed only when its file and its
    manifest both match the device's listing now; a good copy the dock holds from an earlier pull
    says nothing about the device's, so the device must keep its copy."""
    device.record(segments=2)
    out = tmp_path / "archive"
    _pull_over_a_cable(device, out, keyset.dock, confirm=False)
    with LinkedPtys() as cable:
        server = device.server(cable.a_path)
        HostileServer(server, lie_sha256={lied_about: "ab" * 32})
        served = device.serve_with(server)
        summary = pull(cable.b_path, out, keyset.dock)
        served.join()
    assert [p for p in summary.problems if p.startswith(f"{lied_about}: the dock's copy differs")]
    assert summary.verified == summary.confirmed == ["seg-0000000002.seg"]
    assert sorted(device.evidence()) == ["seg-0000000001.manifest", "seg-0000000001.seg"]


def test_a_device_id_that_is_no_plain_name_is_refused_in_one_line(device, keyset, tmp_path):
    """Guards the device ID check: it names the dock's directory for the device, so '../x' is refused."""
    device.record(segments=1)
    before = device.evidence()
    out = tmp_path / "archive"
    with LinkedPtys() as cable:
        server = device.server(cable.a_path)
        server.device_id = "../escaped"
        served = device.serve_with(server)
        with pytest.raises(PullError) as refused:
            pull(cable.b_path, out, keyset.dock)
        served.join()
    assert str(refused.value) == "device sent an unusable device ID '../escaped'"
    assert _files_under(out) == set() and not (tmp_path / "escaped").exists()
    assert device.evidence() == before


def test_a_cable_pulled_mid_fetch_says_so_and_how_to_resume(device, keyset, tmp_path):
    """The link lost mid-pull: one line naming the device and saying a rerun resumes; nothing confirmed."""
    device.record(segments=1)
    before = device.evidence()
    with LinkedPtys() as cable:
        def unplug(request):
            cable.unplug()
            return {"name": request.args["name"], "offset": 0, "length": 0, "size": 0}

        server = device.server(cable.a_path)
        HostileServer(server, fetch=unplug)
        served = device.serve_with(server)
        with pytest.raises(PullError) as lost:
            pull(cable.b_path, tmp_path / "archive", keyset.dock)
        served.join()
    message = str(lost.value)
    assert message.startswith(f"link to {DEVICE_ID} lost: ") and message.endswith("; rerun to resume"), message
    assert "\n" not in message and device.evidence() == before
