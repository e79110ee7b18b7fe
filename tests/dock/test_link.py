"""The frame codec, the reliable link and the simulated cable, each on its own (real ptys, no mocks)."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
import serial

from link.transport import Link, LinkClosed, LinkError, open_port
from link.protocol import (FLAG_TAG, HEADER_SIZE, MAX_PAYLOAD, FrameDecoder, FrameType, ProtocolError,
                           encode_frame)
from link.session import AuthError, device_handshake
from hw_sim.link import Faults, LinkedPtys
from secure_store.keys import raw_public


def test_frame_round_trip_and_tag():
    key = os.urandom(32)
    wire = encode_frame(FrameType.DATA, 41, b"payload", key, more=True)
    assert wire[:2] == b"\xb0\xdc" and len(wire) == HEADER_SIZE + 7 + 16 + 4
    (frame,) = FrameDecoder().feed(wire)
    assert (frame.type, frame.seq, frame.payload, frame.flags & FLAG_TAG) == (FrameType.DATA, 41, b"payload", 1)
    assert frame.tag_ok(key) and not frame.tag_ok(os.urandom(32))
    with pytest.raises(ProtocolError):
        encode_frame(FrameType.DATA, 0, bytes(MAX_PAYLOAD + 1))


def test_decoder_skips_a_damaged_frame_and_keeps_the_next():
    one, two, three = (encode_frame(FrameType.DATA, n, bytes([n]) * 100) for n in (1, 2, 3))
    damaged = bytearray(two)
    damaged[HEADER_SIZE + 50] ^= 0x10                  # a bit error in the payload
    dropped = one[:30] + one[31:]                       # a byte lost inside a frame
    decoder = FrameDecoder()
    got = decoder.feed(b"\x00\xb0garbage" + dropped + bytes(damaged) + three)
    assert [f.seq for f in got] == [3]
    assert decoder.bad_payloads >= 2
    oversized = bytearray(encode_frame(FrameType.DATA, 9, b"x"))
    assert FrameDecoder(max_payload=0).feed(bytes(oversized)) == []


def _pair(cable: LinkedPtys, **kw) -> tuple[Link, Link]:
    a, b = Link(open_port(cable.a_path), **kw), Link(open_port(cable.b_path), **kw)
    k1, k2 = os.urandom(32), os.urandom(32)
    a.establish(k1, k2)
    b.establish(k2, k1)
    return a, b


def test_link_delivers_in_order_through_a_lossy_cable():
    messages = [os.urandom(n) for n in (0, 1, 5000, 70_000, 300) * 6]
    with LinkedPtys(Faults(bit_error_rate=5e-5, drop_rate=2e-5, seed=11)) as cable:
        a, b = _pair(cable)
        received: list[bytes] = []
        reader = threading.Thread(target=lambda: received.extend(b.recv(timeout=20) for _ in messages))
        reader.start()
        for m in messages:
            a.send(m)
        reader.join()
        assert a.flush(10)
        assert received == messages
        assert a.stats["retransmits"] > 0 and b.decoder.bad_payloads + b.decoder.bad_headers > 0
        a.close()
        with pytest.raises(LinkClosed):
            b.recv(timeout=5)
        b.close()


def test_window_keeps_many_frames_in_flight():
    """Not stop-and-wait: the sender has many frames out before the first ACK comes back."""
    with LinkedPtys() as cable:
        a, b = _pair(cable)
        for _ in range(200):
            a.send(os.urandom(1000))
        assert [len(b.recv(timeout=10)) for _ in range(200)] == [1000] * 200
        assert a.stats["max_in_flight"] >= 16
        a.close()
        b.close()


def test_frames_with_the_wrong_key_are_ignored():
    with LinkedPtys() as cable:
        a, b = _pair(cable)
        intruder = Link(serial.serial_for_url(cable.a_path, timeout=0.1))   # ignores the port lock
        intruder.establish(os.urandom(32), os.urandom(32))
        intruder.send(b"forged")
        a.send(b"genuine")
        assert b.recv(timeout=5) == b"genuine"
        deadline = time.monotonic() + 10          # a bound against hangs, not a timing assertion
        while b.stats["bad_tags"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b.stats["bad_tags"] >= 1           # the forged frame (and its resends), refused
        intruder.close(flush_timeout=0)
        a.close()
        b.close()


def test_pulled_cable_ends_both_ends():
    with LinkedPtys(disconnect_after=20_000) as cable:
        a, b = _pair(cable)
        sender_error: list[LinkError] = []

        def send_all() -> None:
            try:
                for _ in range(100):
                    a.send(os.urandom(1000), timeout=5)
                a.flush(5)
            except LinkError as exc:
                sender_error.append(exc)

        sender = threading.Thread(target=send_all)
        sender.start()
        received = 0
        with pytest.raises(LinkError):
            while True:
                b.recv(timeout=5)
                received += 1
        sender.join()
        assert sender_error and 0 < received < 100
        a.close()
        b.close()


def test_simulated_cable_faults_and_unplug(tmp_path):
    link_b = tmp_path / "ttyDOCK"
    with LinkedPtys(Faults(bit_error_rate=1e-3, seed=5), link_b=link_b) as cable:
        assert link_b.is_symlink()
        a = serial.serial_for_url(cable.a_path, timeout=0.5)
        b = serial.serial_for_url(cable.b_path, timeout=0.5)
        data = bytes(20_000)
        a.write(data)
        got = b.read(len(data))
        flipped = sum(bin(x).count("1") for x in got)
        assert len(got) == len(data) and flipped == cable.stats()["bit_errors"] and 60 < flipped < 280
        cable.unplug()
        assert not link_b.exists()
        with pytest.raises(serial.SerialException):
            b.read(1)
            b.write(b"x")
            b.read(1)
        a.close()
        b.close()


def test_version_negotiation_refuses_a_dock_from_the_future(keyset):
    with LinkedPtys() as cable:
        device_end = Link(open_port(cable.a_path))
        result: list[BaseException] = []

        def serve() -> None:
            try:
                device_handshake(device_end, keyset.device, "CAM-0042", [keyset.dock.public_key()], wait=5)
            except AuthError as exc:
                result.append(exc)

        thread = threading.Thread(target=serve)
        thread.start()
        dock_end = Link(open_port(cable.b_path))
        hello = {"versions": [2, 3], "dock_key": raw_public(keyset.dock.public_key()).hex()}
        dock_end.send_frame(FrameType.HELLO, json.dumps(hello).encode())
        reply = dock_end.next_handshake_frame(5)
        thread.join()
        assert reply is not None and reply.type == FrameType.REJECT
        assert reply.payload == b"no common protocol version"
        assert "versions" in str(result[0])
        device_end.close()
        dock_end.close()
