"""DockClient's request loop against a scripted device end, over a real pty pair.

Both ends are real ``Link``s (pyserial on a ``LinkedPtys`` pair, keyed as after a handshake);
the device end is driven by the test with ``link.protocol`` messages, so each test states
exactly what a device says and in which order: late answers to requests the dock gave up
on, chunks out of place, short answers, refusals. Fast and deterministic: answers the dock
will ask for are queued before it asks (request ids count from 1). The dock waits up to 60 s
for an answer that is on its way (a bound against hangs only); only where the device
deliberately leaves a request unanswered is its patience cut short, so it gives up.
"""

from __future__ import annotations

import os
import time

import pytest

from dock.client import DeviceError, DockClient, PullError, Range
from hw_sim.link import LinkedPtys
from link.protocol import Kind, decode_message, encode_message
from link.transport import Link, LinkError, open_port


@pytest.fixture
def ends():
    """(dock client, device link) on a fresh cable."""
    with LinkedPtys() as cable:
        dock, device = Link(open_port(cable.a_path)), Link(open_port(cable.b_path))
        k1, k2 = os.urandom(32), os.urandom(32)
        dock.establish(k1, k2)
        device.establish(k2, k1)
        client = DockClient(dock, session=None, timeout=60)
        try:
            yield client, device
        finally:
            dock.close(flush_timeout=0)
            device.close(flush_timeout=0)


def answer(device: Link, kind: int, request_id: int, meta: dict | None = None, blob: bytes = b"") -> None:
    device.send(encode_message(kind, request_id, meta, blob))


def requests(device: Link, count: int, blobs: list[bytes] | None = None) -> list[tuple[int, dict]]:
    """The next ``count`` requests the dock sent, as (request id, meta); their blobs into ``blobs``."""
    got = []
    for _ in range(count):
        message = decode_message(device.recv(timeout=30))
        assert message.kind == Kind.REQUEST
        got.append((message.request_id, message.meta))
        if blobs is not None:
            blobs.append(message.blob)
    return got


def abandon_a_status_request(client: DockClient, device: Link) -> int:
    """The dock asks for status, gets no answer in time and gives up; the device then answers late.

    The device answers only after the dock has given up, so how soon that is does not matter."""
    client.timeout = 0.2
    with pytest.raises(LinkError):
        client.call("status")
    client.timeout = 60
    [(request_id, meta)] = requests(device, 1)
    assert meta == {"cmd": "status"}
    answer(device, Kind.RESPONSE, request_id, {"battery_percent": 11})   # too late: nobody waits for it
    return request_id


def collector(into: list[bytes]):
    return into.append


def test_fetch_ranges_passes_over_a_late_answer_and_fetches_every_range(ends):
    client, device = ends
    late = abandon_a_status_request(client, device)
    first, second = os.urandom(700), os.urandom(300)
    answer(device, Kind.CHUNK, late + 1, {"offset": 0}, first[:400])
    answer(device, Kind.CHUNK, late + 1, {"offset": 400}, first[400:])
    answer(device, Kind.RESPONSE, late + 1, {"length": 700})
    answer(device, Kind.CHUNK, late + 2, {"offset": 50}, second)
    answer(device, Kind.RESPONSE, late + 2, {"length": 300})
    got_a, got_b, done = [], [], []
    client.fetch_ranges([Range("seg-1.seg", 0, 700, collector(got_a), done.append),
                         Range("seg-1.manifest", 50, 300, collector(got_b), done.append)])
    assert b"".join(got_a) == first and b"".join(got_b) == second
    assert [(r.name, r.received, r.result) for r in done] == [
        ("seg-1.seg", 700, {"length": 700}), ("seg-1.manifest", 300, {"length": 300})]
    assert [meta for _, meta in requests(device, 2)] == [
        {"cmd": "fetch", "name": "seg-1.seg", "offset": 0, "length": 700},
        {"cmd": "fetch", "name": "seg-1.manifest", "offset": 50, "length": 300}]


def test_call_passes_over_a_late_answer_to_its_own(ends):
    client, device = ends
    late = abandon_a_status_request(client, device)
    answer(device, Kind.RESPONSE, late + 1, {"offset_us": -1500, "old_offset_us": 0})
    assert client.sync_time(utc=1_900_000_000.0) == {"offset_us": -1500, "old_offset_us": 0}
    [(request_id, meta)] = requests(device, 1)
    assert (request_id, meta) == (late + 1, {"cmd": "time", "utc": 1_900_000_000.0})


def test_call_hands_chunks_to_on_chunk_in_order(ends):
    client, device = ends
    parts = [os.urandom(100), os.urandom(50)]
    answer(device, Kind.CHUNK, 1, {"offset": 0}, parts[0])
    answer(device, Kind.CHUNK, 1, {"offset": 100}, parts[1])
    answer(device, Kind.RESPONSE, 1, {"ok": True})
    got: list[tuple[int, bytes]] = []
    assert client.call("firmware_read", on_chunk=lambda offset, blob: got.append((offset, blob)), slot="a") == {"ok": True}
    assert got == [(0, parts[0]), (100, parts[1])]
    assert requests(device, 1) == [(1, {"cmd": "firmware_read", "slot": "a"})]


def test_call_refuses_a_chunk_without_an_offset(ends):
    client, device = ends
    answer(device, Kind.CHUNK, 1, {"offset": "0"}, b"x")
    with pytest.raises(PullError, match="^device sent a chunk without an offset$"):
        client.call("firmware_read", on_chunk=lambda offset, blob: None)


def test_call_sends_its_blob_and_none_unless_given(ends):
    client, device = ends
    answer(device, Kind.RESPONSE, 1, {})
    answer(device, Kind.RESPONSE, 2, {})
    client.call("firmware_chunk", blob=b"\x00image bytes", offset=0)
    client.call("status")
    blobs: list[bytes] = []
    assert requests(device, 2, blobs) == [(1, {"cmd": "firmware_chunk", "offset": 0}), (2, {"cmd": "status"})]
    assert blobs == [b"\x00image bytes", b""]


def test_time_sync_sends_the_docks_own_utc_by_default(ends):
    client, device = ends
    answer(device, Kind.RESPONSE, 1, {"offset_us": 0})
    before = time.time()
    client.sync_time()
    after = time.time()
    [(_, meta)] = requests(device, 1)
    assert meta["cmd"] == "time" and before <= meta["utc"] <= after


def test_call_raises_the_devices_refusal_with_its_code(ends):
    client, device = ends
    answer(device, Kind.ERROR, 1, {"error": "segment not sealed", "code": "not_sealed"})
    with pytest.raises(DeviceError, match="device refused confirm: segment not sealed") as refused:
        client.confirm("seg-1.seg", "ab" * 32)
    assert refused.value.code == "not_sealed"
    assert requests(device, 1) == [(1, {"cmd": "confirm", "segment": "seg-1.seg", "manifest_sha256": "ab" * 32})]


def test_a_refusal_without_reason_or_code_still_says_so(ends):
    client, device = ends
    answer(device, Kind.ERROR, 1, {})
    with pytest.raises(DeviceError, match="device refused status: no reason") as refused:
        client.status()
    assert refused.value.code == ""


def test_fetch_raises_the_devices_refusal_of_a_range(ends):
    client, device = ends
    answer(device, Kind.ERROR, 1, {"error": "no such file", "code": "not_found"})
    with pytest.raises(DeviceError, match="device refused fetch: no such file") as refused:
        client.fetch("seg-9.seg", 0, 10, lambda data: None)
    assert refused.value.code == "not_found"


def test_a_refused_range_does_not_stop_the_next(ends):
    client, device = ends
    body = os.urandom(64)
    answer(device, Kind.ERROR, 1, {})
    answer(device, Kind.CHUNK, 2, {"offset": 0}, body)
    answer(device, Kind.RESPONSE, 2, {"length": 64})
    got, done = [], []
    client.fetch_ranges([Range("a", 0, 10, lambda d: None, done.append), Range("b", 0, 64, got.append, done.append)])
    assert isinstance(done[0].result, DeviceError) and str(done[0].result) == "device refused fetch: no reason"
    assert done[0].result.code == ""
    assert done[1].result == {"length": 64} and got == [body]


def test_fetch_returns_the_byte_count(ends):
    client, device = ends
    answer(device, Kind.CHUNK, 1, {"offset": 10}, b"0123456789")
    answer(device, Kind.RESPONSE, 1, {"length": 10})
    got = []
    assert client.fetch("seg-1.seg", 10, 10, got.append) == 10
    assert got == [b"0123456789"]
    assert requests(device, 1) == [(1, {"cmd": "fetch", "name": "seg-1.seg", "offset": 10, "length": 10})]


@pytest.mark.parametrize("offset", [0, 101, None])
def test_a_chunk_out_of_place_stops_the_fetch(ends, offset):
    client, device = ends
    answer(device, Kind.CHUNK, 1, {"offset": 0}, b"x" * 100)
    answer(device, Kind.CHUNK, 1, {} if offset is None else {"offset": offset}, b"y" * 100)
    got = []
    with pytest.raises(PullError, match=f"seg-1.seg: chunk at {offset}, expected 100"):
        client.fetch("seg-1.seg", 0, 200, got.append)
    assert got == [b"x" * 100]            # the misplaced bytes were never written


@pytest.mark.parametrize("said", [99, 101, None])
def test_an_answer_that_disagrees_with_the_bytes_sent_stops_the_fetch(ends, said):
    client, device = ends
    answer(device, Kind.CHUNK, 1, {"offset": 0}, b"x" * 100)
    answer(device, Kind.RESPONSE, 1, {} if said is None else {"length": said})
    with pytest.raises(PullError, match=f"seg-1.seg: received 100 bytes, device says {said}"):
        client.fetch("seg-1.seg", 0, 100, lambda d: None)


def test_a_request_from_the_device_is_not_an_answer(ends):
    """Kinds other than CHUNK, ERROR and RESPONSE under a waiting id are passed over, not taken as the end."""
    client, device = ends
    answer(device, Kind.REQUEST, 1, {"cmd": "status"})
    answer(device, Kind.CHUNK, 1, {"offset": 0}, b"abc")
    answer(device, Kind.RESPONSE, 1, {"length": 3})
    got = []
    assert client.fetch("x", 0, 3, got.append) == 3 and got == [b"abc"]


def test_a_malformed_message_is_a_pull_error(ends):
    client, device = ends
    device.send(b"\x02\x00")
    with pytest.raises(PullError, match="device sent a malformed message"):
        client.status()


def test_list_evidence_reads_items_and_refuses_a_malformed_one(ends):
    client, device = ends
    items = [{"name": "seg-1.seg", "size": 10, "sha256": "00" * 32, "kind": "segment"}]
    answer(device, Kind.RESPONSE, 1, {"items": items})
    answer(device, Kind.RESPONSE, 2, {})
    answer(device, Kind.RESPONSE, 3, {"items": [{"name": "seg-2.seg", "size": "big", "sha256": "", "kind": "segment"}]})
    listed = client.list_evidence()
    assert [(i.name, i.size, i.sha256, i.kind) for i in listed] == [("seg-1.seg", 10, "00" * 32, "segment")]
    assert client.list_evidence() == []
    with pytest.raises(PullError, match="device listed a malformed item"):
        client.list_evidence()
    assert [meta for _, meta in requests(device, 3)] == [{"cmd": "list"}] * 3
