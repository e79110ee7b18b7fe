"""Hypothesis-fuzzed bytes, frames and commands at both ends: no crash, the session ends cleanly."""

from __future__ import annotations

import json
import os
import threading

import serial
from hypothesis import HealthCheck, given, settings, strategies as st

from dock.client import DeviceError, DockClient, PullError
from link.transport import LinkError
from link.protocol import FrameDecoder, FrameType, Kind, ProtocolError, decode_message, encode_frame, encode_message
from hw_sim.link import LinkedPtys
from secure_store.keys import raw_public

FRAME_TYPES = [t.value for t in FrameType] + [0x00, 0x7F, 0xFF]
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                           lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
                           max_leaves=10)


def frames(keys: list[bytes | None]) -> st.SearchStrategy[bytes]:
    """Well-formed frames (valid CRCs) with hostile contents, tagged with any of ``keys``."""
    return st.builds(
        lambda t, seq, payload, key, more: encode_frame(t, seq, payload, key, more),
        st.sampled_from(FRAME_TYPES), st.integers(0, 2**32 - 1), st.binary(max_size=300),
        st.sampled_from(keys), st.booleans())


def hellos(dock_public: bytes) -> st.SearchStrategy[bytes]:
    """HELLO frames that get past the enrolment check but are otherwise wrong."""
    fields = st.fixed_dictionaries({
        "versions": st.one_of(st.just([1]), st.lists(st.integers(-2, 3), max_size=3), json_values),
        "dock_key": st.just(dock_public.hex()),
        "nonce": st.one_of(st.just(os.urandom(32).hex()), st.text(max_size=70)),
        "ephemeral": st.one_of(st.just(os.urandom(32).hex()), st.text(max_size=70)),
        "max_payload": st.one_of(st.integers(-10, 10**9), json_values),
        "window": st.one_of(st.integers(-10, 10**6), json_values),
    })
    return fields.map(lambda d: encode_frame(FrameType.HELLO, 0, json.dumps(d).encode()))


def test_decoder_recovers_every_frame_between_garbage():
    @given(st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=200)), max_size=8),
           st.lists(st.integers(1, 64), min_size=1, max_size=10))
    @settings(max_examples=200)
    def check(parts, cuts):
        stream, expected = b"", []
        for garbage, payload in parts:
            stream += garbage + encode_frame(FrameType.DATA, len(expected), payload, b"k" * 32)
            expected.append(payload)
        decoder, got, pos = FrameDecoder(), [], 0
        for cut in cuts * (len(stream) // sum(cuts) + 1):
            got += decoder.feed(stream[pos:pos + cut])
            pos += cut
        got += decoder.feed(stream[pos:])
        assert [f.payload for f in got] == expected
        assert all(f.tag_ok(b"k" * 32) for f in got)
    check()


@given(st.binary(max_size=200))
@settings(max_examples=200)
def test_message_decoder_raises_only_protocol_errors(data):
    try:
        decode_message(data)
    except ProtocolError:
        pass
    for kind in Kind:
        assert decode_message(encode_message(kind, 7, {"a": 1}, data)).blob == data


def _write_all(port: serial.Serial, chunks: list[bytes]) -> None:
    for chunk in chunks:
        port.write(chunk)


@settings(max_examples=12, suppress_health_check=list(HealthCheck), deadline=None)
@given(data=st.data())
def test_fuzzed_frames_at_the_device_end(make_device, keyset, data):
    device = make_device()
    device.record(segments=1, chunks=1, frame_bytes=100)
    before = device.evidence()
    chunks = data.draw(st.lists(st.one_of(st.binary(max_size=300), frames([None, os.urandom(32)]),
                                          hellos(raw_public(keyset.dock.public_key()))), max_size=12))
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path, wait=2.0, handshake_timeout=1.0, idle_timeout=1.0)
        with serial.serial_for_url(cable.b_path, timeout=0.1) as port:
            _write_all(port, chunks)
            port.read(4096)
        cable.unplug()
        served.join()
    assert served.error is None or isinstance(served.error, LinkError), repr(served.error)
    assert device.evidence() == before
    assert "delete" not in [e.event for e in device.events()]


@settings(max_examples=12, suppress_health_check=list(HealthCheck), deadline=None)
@given(chunks=st.lists(st.one_of(st.binary(max_size=300), frames([None, os.urandom(32)])), max_size=12))
def test_fuzzed_frames_at_the_dock_end(keyset, chunks):
    with LinkedPtys() as cable:
        fake_device = serial.serial_for_url(cable.a_path, timeout=0.1)
        writer = threading.Thread(target=_write_all, args=(fake_device, chunks * 3))
        writer.start()
        try:
            DockClient.connect(cable.b_path, keyset.dock, handshake_timeout=0.6).close()
            raise AssertionError("a fake device authenticated")
        except LinkError:
            pass
        finally:
            writer.join()
            fake_device.close()


def test_fuzzed_commands_in_an_authenticated_session(device, keyset):
    device.record(segments=1, chunks=1, frame_bytes=100)
    before = device.evidence()
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        with DockClient.connect(cable.b_path, keyset.dock) as client:
            client.list_evidence()

            @given(st.sampled_from(["status", "list", "fetch", "confirm", "time", "", "x" * 300]),
                   st.dictionaries(st.sampled_from(["name", "offset", "length", "segment", "manifest_sha256",
                                                    "utc", "cmd"]), json_values, max_size=5),
                   st.binary(max_size=100))
            @settings(max_examples=60, deadline=None)
            def check(command, args, blob):
                try:
                    client.call(command, blob=blob, **{k: v for k, v in args.items() if k != "cmd"})
                except (DeviceError, PullError):
                    pass

            check()
            # raw garbage messages inside the authenticated stream: answered with errors, session lives on
            for junk in (b"", b"\x09" * 9, encode_message(Kind.CHUNK, 5, {}, b"zz")[:-1] + b"\xff\x00"):
                client.link.send(junk)
            assert client.status()["device_id"] == "CAM-0042"
        served.join()
    assert served.error is None and served.result is not None
    assert device.evidence() == before
