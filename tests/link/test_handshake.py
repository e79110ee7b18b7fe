"""The dock-link handshake (link.session) message by message, over a real pty pair.

Either end is the real ``dock_handshake`` / ``device_handshake``; the other is either the real
one too (what a session agrees: version, payload size, window, features, who is who, keys that
work in each direction) or the test, sending hand-made HELLO or HELLO_REPLY frames through a
real ``Link`` (what each end refuses, and what it tells the other). No timing is asserted:
each refusal comes in answer to the frame that earned it, and the handshakes' own timeouts
are set long (60 s) so that only a hang, never a slow machine, runs them out.
"""

from __future__ import annotations

import json
import os
import threading

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hw_sim.link import LinkedPtys
from link.protocol import DEFAULT_PAYLOAD, MAX_PAYLOAD, SUPPORTED_VERSIONS, FrameType
from link.session import AUTH_FAILED, AuthError, _transcript, device_handshake, dock_handshake
from link.transport import Link, LinkTimeout, open_port
from secure_store import keys
from secure_store.keys import fingerprint, raw_public

DEVICE_ID = "CAM-0077"


@pytest.fixture(scope="module")
def ks():
    return {"dock": keys.generate("dock"), "device": keys.generate("device")}


@pytest.fixture
def cable():
    with LinkedPtys() as cable:
        dock, device = Link(open_port(cable.a_path)), Link(open_port(cable.b_path))
        try:
            yield dock, device
        finally:
            dock.close(flush_timeout=0)
            device.close(flush_timeout=0)


class Beside(threading.Thread):
    """Runs one end's handshake in a thread; ``result()`` is its Session or re-raises its error."""

    def __init__(self, fn, *args, **kw):
        super().__init__(daemon=True)
        self.fn, self.args, self.kw, self.value, self.error = fn, args, kw, None, None
        self.start()

    def run(self):
        try:
            self.value = self.fn(*self.args, **self.kw)
        except BaseException as exc:  # handed to the test thread
            self.error = exc

    def result(self):
        self.join(60)
        assert not self.is_alive(), "handshake did not end"
        if self.error is not None:
            raise self.error
        return self.value


def hello(key, **changes) -> bytes:
    info = {"protocol": "bodycam-dock", "versions": list(SUPPORTED_VERSIONS), "nonce": os.urandom(32).hex(),
            "ephemeral": raw_public(x25519.X25519PrivateKey.generate().public_key()).hex(),
            "dock_key": raw_public(key.public_key()).hex(), "max_payload": 4096, "window": 64,
            "features": ["part", "repair1"]}
    info.update(changes)
    return json.dumps({k: v for k, v in info.items() if v is not None}).encode()


def next_frame(link: Link, want: FrameType):
    frame = link.next_handshake_frame(30)
    assert frame is not None, f"no {want.name}"
    assert frame.type == want, frame.type
    return frame


# --- both ends real -----------------------------------------------------------------------

def test_both_ends_agree_on_who_is_who_and_on_the_link(cable, ks):
    dock_link, device_link = cable
    device = Beside(device_handshake, device_link, ks["device"], DEVICE_ID, [ks["dock"].public_key()],
                    firmware_version="2.4.1", max_payload=2048, timeout=60)
    at_dock = dock_handshake(dock_link, ks["dock"], max_payload=8192, timeout=60)
    at_device = device.result()
    assert (at_dock.device_id, at_dock.firmware_version) == (DEVICE_ID, "2.4.1")
    assert (at_device.device_id, at_device.firmware_version) == (DEVICE_ID, "2.4.1")
    assert at_dock.peer_fingerprint == fingerprint(ks["device"].public_key())
    assert at_device.peer_fingerprint == fingerprint(ks["dock"].public_key())
    assert raw_public(at_dock.peer_key) == raw_public(ks["device"].public_key())
    assert raw_public(at_device.peer_key) == raw_public(ks["dock"].public_key())
    assert at_dock.version == at_device.version == max(SUPPORTED_VERSIONS)
    assert at_dock.max_payload == at_device.max_payload == 2048     # the smaller offer
    assert at_dock.peer_cert_pem == at_device.peer_cert_pem == ""
    # the session keys work, one per direction
    dock_link.send(b"to the device")
    device_link.send(b"to the dock")
    assert device_link.recv(timeout=30) == b"to the device"
    assert dock_link.recv(timeout=30) == b"to the dock"


def test_a_tiny_payload_offer_is_raised_to_the_floor(cable, ks):
    dock_link, device_link = cable
    device = Beside(device_handshake, device_link, ks["device"], DEVICE_ID, [ks["dock"].public_key()],
                    max_payload=100, timeout=60)
    at_dock = dock_handshake(dock_link, ks["dock"], max_payload=200, timeout=60)
    assert at_dock.max_payload == device.result().max_payload == 1024


def test_certificate_chains_are_handed_across(cable, ks):
    dock_link, device_link = cable
    seen = []

    def admit(raw, chain):
        seen.append((raw, chain))
        return ks["dock"].public_key()

    device = Beside(device_handshake, device_link, ks["device"], DEVICE_ID, [], cert_chain="DEVICE CHAIN",
                    dock_trust=admit, timeout=60)
    at_dock = dock_handshake(dock_link, ks["dock"], cert_chain="DOCK CHAIN", timeout=60)
    at_device = device.result()
    assert seen == [(raw_public(ks["dock"].public_key()), "DOCK CHAIN")]
    assert (at_dock.peer_cert_pem, at_device.peer_cert_pem) == ("DEVICE CHAIN", "DOCK CHAIN")


def test_a_dock_the_trust_hook_refuses_is_rejected(cable, ks):
    dock_link, device_link = cable
    device = Beside(device_handshake, device_link, ks["device"], DEVICE_ID, [], dock_trust=lambda raw, chain: None)
    with pytest.raises(AuthError, match="the device refused this dock: dock not enrolled on this device"):
        dock_handshake(dock_link, ks["dock"], cert_chain="DOCK CHAIN", timeout=60)
    with pytest.raises(AuthError, match=r"is not enrolled"):
        device.result()


# --- the test as the dock: what the device refuses ----------------------------------------

@pytest.mark.parametrize("versions", [[99], [], "1", [True], ["1"], None])
def test_device_rejects_a_hello_with_no_common_version(cable, ks, versions):
    dock_link, device_link = cable
    device = Beside(device_handshake, device_link, ks["device"], DEVICE_ID, [ks["dock"].public_key()])
    dock_link.send_frame(FrameType.HELLO, hello(ks["dock"], versions=versions))
    assert next_frame(dock_link, FrameType.REJECT).payload == b"no common protocol version"
    with pytest.raises(AuthError, match="dock offers protocol versions"):
        device.result()


@pytest.mark.parametrize("payload, words", [
    (b"not json", "dock hello is not JSON"),
    (b"[1, 2]", "dock hello is not a JSON object"),
])
def test_device_refuses_a_hello_that_is_not_an_object(cable, ks, payload, words):
    dock_link, device_link = cable
    device = Beside(device_handshake, device_link, ks["device"], DEVICE_ID, [ks["dock"].public_key()])
    dock_link.send_frame(FrameType.HELLO, payload)
    with pytest.raises(AuthError, match=f"^{words}$"):
        device.result()


@pytest.mark.parametrize("field, value, words", [
    ("dock_key", None, "dock hello lacks a valid 'dock_key'"),
    ("dock_key", "zz", "dock hello lacks a valid 'dock_key'"),
    ("dock_key", "00" * 31, "dock hello field 'dock_key' must be 32 bytes"),
    ("nonce", None, "dock hello lacks a valid 'nonce'"),
    ("nonce", "00" * 33, "dock hello field 'nonce' must be 32 bytes"),
])
def test_device_refuses_a_hello_with_a_bad_field(cable, ks, field, value, words):
    dock_link, device_link = cable
    device = Beside(device_handshake, device_link, ks["device"], DEVICE_ID, [ks["dock"].public_key()])
    dock_link.send_frame(FrameType.HELLO, hello(ks["dock"], **{field: value}))
    with pytest.raises(AuthError, match=f"^{words}$"):
        device.result()


def test_device_reply_is_signed_over_the_hello_and_offers_what_was_agreed(cable, ks):
    """The HELLO_REPLY a dock gets: the device's identity, signed over this very HELLO."""
    dock_link, device_link = cable
    Beside(device_handshake, device_link, ks["device"], DEVICE_ID, [ks["dock"].public_key()],
           firmware_version="9.9", max_payload=3000)
    sent = hello(ks["dock"], max_payload=2500, features=["part", "telepathy", 7])
    dock_link.send_frame(FrameType.HELLO, sent)
    reply = next_frame(dock_link, FrameType.HELLO_REPLY).payload
    body, signature = reply[:-64], reply[-64:]
    ks["device"].public_key().verify(signature, b"device" + _transcript(sent, body))
    info = json.loads(body)
    assert (info["version"], info["device_id"], info["firmware"]) == (max(SUPPORTED_VERSIONS), DEVICE_ID, "9.9")
    assert info["device_key"] == raw_public(ks["device"].public_key()).hex()
    assert info["max_payload"] == 2500 and info["features"] == ["part"]
    assert len(bytes.fromhex(info["nonce"])) == 32 and len(bytes.fromhex(info["ephemeral"])) == 32
    assert "device_cert" not in info


# --- the test as the device: what the dock refuses ----------------------------------------

def _signed_reply(signer, sent_hello: bytes, **changes) -> bytes:
    info = {"version": max(SUPPORTED_VERSIONS), "device_id": DEVICE_ID,
            "device_key": raw_public(signer.public_key()).hex(), "firmware": "",
            "nonce": os.urandom(32).hex(),
            "ephemeral": raw_public(x25519.X25519PrivateKey.generate().public_key()).hex(),
            "max_payload": 4096, "window": 64, "features": []}
    info.update(changes)
    body = json.dumps({k: v for k, v in info.items() if v is not None}).encode()
    return body + signer.sign(b"device" + _transcript(sent_hello, body))


def _dock_meets(dock_link, device_link, ks, make_reply):
    dock = Beside(dock_handshake, dock_link, ks["dock"], timeout=30, retry=30)
    sent = next_frame(device_link, FrameType.HELLO).payload
    device_link.send_frame(FrameType.HELLO_REPLY, make_reply(sent))
    return dock


@pytest.mark.parametrize("version", [99, "1", None])
def test_dock_refuses_a_version_it_does_not_speak(cable, ks, version):
    dock_link, device_link = cable
    dock = _dock_meets(dock_link, device_link, ks, lambda sent: _signed_reply(ks["device"], sent, version=version))
    with pytest.raises(AuthError, match=f"device chose protocol version {version!r}"):
        dock.result()


def test_dock_refuses_a_reply_signed_over_another_hello(cable, ks):
    dock_link, device_link = cable
    dock = _dock_meets(dock_link, device_link, ks, lambda sent: _signed_reply(ks["device"], sent + b" "))
    with pytest.raises(AuthError, match="the device's signature does not verify"):
        dock.result()


@pytest.mark.parametrize("make, words", [
    (lambda key, sent: b"x" * 64, "^device reply too short$"),
    (lambda key, sent: b"[]" + bytes(64), "^device reply is not a JSON object$"),
    (lambda key, sent: _signed_reply(key, sent, device_key="00" * 16), "^device reply field 'device_key' must be 32 bytes$"),
    (lambda key, sent: _signed_reply(key, sent, ephemeral=None), "^device reply lacks a valid 'ephemeral'$"),
])
def test_dock_refuses_a_malformed_reply(cable, ks, make, words):
    dock_link, device_link = cable
    dock = _dock_meets(dock_link, device_link, ks, lambda sent: make(ks["device"], sent))
    with pytest.raises(AuthError, match=words):
        dock.result()


@pytest.mark.parametrize("reason, said", [(b"battery too low", "battery too low"), (b"", "no reason given")])
def test_dock_reports_the_devices_reason_for_a_reject(cable, ks, reason, said):
    dock_link, device_link = cable
    dock = Beside(dock_handshake, dock_link, ks["dock"], timeout=30, retry=30)
    next_frame(device_link, FrameType.HELLO)
    device_link.send_frame(FrameType.REJECT, reason)
    with pytest.raises(AuthError, match=f"^the device refused this dock: {said}$"):
        dock.result()


def test_dock_starts_over_once_when_the_device_gave_up_the_handshake_it_answered(cable, ks):
    """A device whose handshake timed out while its reply was on the way answers the dock's repeated
    HELLO afresh (new nonce) and so refuses the AUTH signed over its first reply: the dock starts
    over once with a new HELLO, ignores the late second reply to the first one, and gets in."""
    dock_link, device_link = cable
    dock = Beside(dock_handshake, dock_link, ks["dock"], timeout=30, retry=30)
    first = next_frame(device_link, FrameType.HELLO).payload
    device_link.send_frame(FrameType.HELLO_REPLY, _signed_reply(ks["device"], first))
    next_frame(device_link, FrameType.AUTH)
    afresh = _signed_reply(ks["device"], first)            # the device timed out and answered a repeat anew
    device_link.send_frame(FrameType.HELLO_REPLY, afresh)
    device_link.send_frame(FrameType.REJECT, AUTH_FAILED)
    device_link.send_frame(FrameType.HELLO_REPLY, afresh)  # and once more, late: not an answer to the new HELLO
    device = Beside(device_handshake, device_link, ks["device"], DEVICE_ID, [ks["dock"].public_key()], timeout=30)
    dock_session, device_session = dock.result(), device.result()
    assert dock_session.peer_fingerprint == fingerprint(ks["device"].public_key())
    assert device_session.peer_fingerprint == fingerprint(ks["dock"].public_key())
    dock_link.send(b"after the second HELLO")
    assert device_link.recv(timeout=30) == b"after the second HELLO"


def test_dock_starts_over_only_once(cable, ks):
    dock_link, device_link = cable
    dock = Beside(dock_handshake, dock_link, ks["dock"], timeout=30, retry=30)
    hellos = []
    for _ in range(2):
        hellos.append(next_frame(device_link, FrameType.HELLO).payload)
        device_link.send_frame(FrameType.HELLO_REPLY, _signed_reply(ks["device"], hellos[-1]))
        next_frame(device_link, FrameType.AUTH)
        device_link.send_frame(FrameType.HELLO_REPLY, _signed_reply(ks["device"], hellos[-1]))
        device_link.send_frame(FrameType.REJECT, AUTH_FAILED)
    with pytest.raises(AuthError, match="^the device refused this dock: dock authentication failed$"):
        dock.result()
    assert hellos[0] != hellos[1]


@pytest.mark.parametrize("second_reply", ["none", "a repeat of the first", "signed over another hello"])
def test_a_refused_auth_is_final_unless_the_device_answered_our_hello_anew(cable, ks, second_reply):
    """An impostor (or a dock not enrolled) is refused at once: no second HELLO (a dock that started
    over would wait out its timeout for an answer and end with LinkTimeout, not this AuthError)."""
    dock_link, device_link = cable
    dock = Beside(dock_handshake, dock_link, ks["dock"], timeout=30, retry=30)
    sent = next_frame(device_link, FrameType.HELLO).payload
    reply = _signed_reply(ks["device"], sent)
    device_link.send_frame(FrameType.HELLO_REPLY, reply)
    next_frame(device_link, FrameType.AUTH)
    if second_reply != "none":
        device_link.send_frame(FrameType.HELLO_REPLY, reply if second_reply == "a repeat of the first"
                               else _signed_reply(ks["device"], sent + b" "))
    device_link.send_frame(FrameType.REJECT, AUTH_FAILED)
    with pytest.raises(AuthError, match="^the device refused this dock: dock authentication failed$"):
        dock.result()

# --- session keys, remembered answers and what the dock agrees, from the spec's words ------

def spec_keys(own: x25519.X25519PrivateKey, peer_ephemeral_hex: str, hello_bytes: bytes, body: bytes):
    """docs/PROTOCOL.md §4: HKDF-SHA256(salt = T, info = "bodycam-dock v1 session keys",
    IKM = X25519(eph, eph')) → 64 bytes: K_D→V = first 32, K_V→D = last 32."""
    shared = own.exchange(x25519.X25519PublicKey.from_public_bytes(bytes.fromhex(peer_ephemeral_hex)))
    okm = HKDF(hashes.SHA256(), 64, salt=_transcript(hello_bytes, body),
               info=b"bodycam-dock v1 session keys").derive(shared)
    return okm[:32], okm[32:]


def _as_device(dock_link, device_link, ks, dock_kw=None, **changes):
    """The test as a device that follows the spec to the end: the dock's Session, its HELLO, and the
    device's link established with keys derived from the spec."""
    dock = Beside(dock_handshake, dock_link, ks["dock"], timeout=30, retry=30, **(dock_kw or {}))
    sent = next_frame(device_link, FrameType.HELLO).payload
    ephemeral = x25519.X25519PrivateKey.generate()
    reply = _signed_reply(ks["device"], sent, ephemeral=raw_public(ephemeral.public_key()).hex(), **changes)
    device_link.send_frame(FrameType.HELLO_REPLY, reply)
    auth = next_frame(device_link, FrameType.AUTH).payload
    ks["dock"].public_key().verify(auth, b"dock" + _transcript(sent, reply[:-64]))
    to_device, to_dock = spec_keys(ephemeral, json.loads(sent)["ephemeral"], sent, reply[:-64])
    device_link.send_frame(FrameType.AUTH_OK, b"ok", to_dock)
    device_link.establish(to_dock, to_device)
    return dock.result(), sent


def test_dock_hello_says_what_the_spec_lists_and_no_empty_certificate(cable, ks):
    dock_link, device_link = cable
    Beside(dock_handshake, dock_link, ks["dock"], max_payload=3000, timeout=30, retry=30)
    info = json.loads(next_frame(device_link, FrameType.HELLO).payload)
    assert info["protocol"] == "bodycam-dock" and info["versions"] == list(SUPPORTED_VERSIONS)
    assert info["dock_key"] == raw_public(ks["dock"].public_key()).hex()
    assert (info["max_payload"], info["window"], info["features"]) == (3000, dock_link.window, ["part", "repair1"])
    assert len(bytes.fromhex(info["nonce"])) == 32 and len(bytes.fromhex(info["ephemeral"])) == 32
    assert "dock_cert" not in info     # optional: sent only by a dock that has a chain


def test_dock_session_keys_are_the_specs_both_ways(cable, ks):
    """A device deriving its keys from docs/PROTOCOL.md alone gets in and talks both ways."""
    dock_link, device_link = cable
    session, _ = _as_device(dock_link, device_link, ks)
    assert session.peer_fingerprint == fingerprint(ks["device"].public_key())
    dock_link.send(b"to the device")
    device_link.send(b"to the dock")
    assert device_link.recv(timeout=30) == b"to the device"
    assert dock_link.recv(timeout=30) == b"to the dock"


def test_device_answers_auth_with_the_specs_key_and_repeats_its_answers_exactly(cable, ks):
    """The test as a dock following the spec: AUTH_OK is "ok" tagged with K_V→D (never anything
    else in the clear), the keys work both ways, and a repeated HELLO or AUTH (its answer was lost)
    gets the identical answer again, sequence number 0."""
    dock_link, device_link = cable
    device = Beside(device_handshake, device_link, ks["device"], DEVICE_ID, [ks["dock"].public_key()], timeout=30)
    ephemeral = x25519.X25519PrivateKey.generate()
    sent = hello(ks["dock"], ephemeral=raw_public(ephemeral.public_key()).hex())
    dock_link.send_frame(FrameType.HELLO, sent)
    reply = next_frame(dock_link, FrameType.HELLO_REPLY)
    body = reply.payload[:-64]
    to_device, to_dock = spec_keys(ephemeral, json.loads(body)["ephemeral"], sent, body)
    auth = ks["dock"].sign(b"dock" + _transcript(sent, body))
    dock_link.send_frame(FrameType.AUTH, auth)
    ok = next_frame(dock_link, FrameType.AUTH_OK)
    assert (ok.seq, ok.payload) == (0, b"ok") and ok.tag_ok(to_dock)
    session = device.result()
    assert (session.device_id, session.peer_fingerprint) == (DEVICE_ID, fingerprint(ks["dock"].public_key()))
    dock_link.send_frame(FrameType.HELLO, sent)
    again = next_frame(dock_link, FrameType.HELLO_REPLY)
    assert (again.seq, again.payload) == (0, reply.payload)
    dock_link.send_frame(FrameType.AUTH, auth)
    ok_again = next_frame(dock_link, FrameType.AUTH_OK)
    assert (ok_again.seq, ok_again.payload, ok_again.tag) == (0, b"ok", ok.tag)
    dock_link.establish(to_device, to_dock)
    dock_link.send(b"to the device")
    device_link.send(b"to the dock")
    assert device_link.recv(timeout=30) == b"to the device"
    assert dock_link.recv(timeout=30) == b"to the dock"


@pytest.mark.parametrize("dock_offer, device_offer, agreed", [
    (2048, 65536, 2048),                         # never more than the dock offered
    (10 ** 6, 10 ** 6, MAX_PAYLOAD),             # never more than a frame can hold
    (10 ** 6, None, DEFAULT_PAYLOAD),            # a device that names none gets the default
    (10 ** 6, "4096", DEFAULT_PAYLOAD),          # ... as does one that names it wrongly
])
def test_dock_agrees_the_smaller_payload_within_the_frame_limit(cable, ks, dock_offer, device_offer, agreed):
    dock_link, device_link = cable
    session, _ = _as_device(dock_link, device_link, ks, {"max_payload": dock_offer}, max_payload=device_offer)
    assert session.max_payload == agreed


@pytest.mark.parametrize("device_window, peer_window_end", [(8, 8), ("8", None), (None, None)])
def test_dock_sends_no_more_than_the_devices_window(cable, ks, device_window, peer_window_end):
    dock_link, device_link = cable
    default = dock_link.sender.peer_window_end
    _as_device(dock_link, device_link, ks, window=device_window)
    assert dock_link.sender.peer_window_end == (peer_window_end or default)


def test_dock_reports_a_device_that_names_no_id_with_an_empty_one(cable, ks):
    dock_link, device_link = cable
    session, _ = _as_device(dock_link, device_link, ks, device_id=None, firmware=None)
    assert (session.device_id, session.firmware_version) == ("", "")


def test_dock_waits_out_a_stray_frame_without_resending(cable, ks):
    """A frame of the wrong type while the dock waits for HELLO_REPLY is ignored: the dock neither
    fails nor sends its HELLO again before its retry time (30 s here)."""
    dock_link, device_link = cable
    dock = Beside(dock_handshake, dock_link, ks["dock"], timeout=30, retry=30)
    sent = next_frame(device_link, FrameType.HELLO).payload
    device_link.send_frame(FrameType.AUTH_OK, b"stray")
    device_link.send_frame(FrameType.HELLO_REPLY, _signed_reply(ks["device"], sent))
    next_frame(device_link, FrameType.AUTH)     # not a second HELLO first
    device_link.send_frame(FrameType.REJECT, b"test over")
    with pytest.raises(AuthError, match="^the device refused this dock: test over$"):
        dock.result()


def test_dock_tells_the_operator_when_nothing_answers(cable, ks):
    dock_link, _ = cable
    with pytest.raises(LinkTimeout) as caught:
        dock_handshake(dock_link, ks["dock"], timeout=0.2, retry=0.1)
    assert str(caught.value) == "no HELLO_REPLY from the device: is the camera docked, and is this its port?"


def test_dock_tells_the_operator_when_the_device_never_confirms(cable, ks):
    dock_link, device_link = cable
    dock = Beside(dock_handshake, dock_link, ks["dock"], timeout=2, retry=30)
    sent = next_frame(device_link, FrameType.HELLO).payload
    device_link.send_frame(FrameType.HELLO_REPLY, _signed_reply(ks["device"], sent))
    next_frame(device_link, FrameType.AUTH)
    with pytest.raises(LinkTimeout) as caught:
        dock.result()
    assert str(caught.value) == "no AUTH_OK from the device"


# --- the device against a dock that follows the spec, hello by hello -----------------------

def _as_dock(dock_link, device_link, ks, signer=None, restart: bool = False, **changes):
    """The test as a dock following the spec against the real device: sends HELLO (a second,
    fresh one first if ``restart``: it started over), signs AUTH over the last reply with
    ``signer`` (the dock's key unless given). The device's Session (or its error) and the body of
    the reply the AUTH answered."""
    device = Beside(device_handshake, device_link, ks["device"], DEVICE_ID, [ks["dock"].public_key()], timeout=30)
    for _ in range(2 if restart else 1):
        sent = hello(ks["dock"], **changes)
        dock_link.send_frame(FrameType.HELLO, sent)
        body = next_frame(dock_link, FrameType.HELLO_REPLY).payload[:-64]
    dock_link.send_frame(FrameType.AUTH, (signer or ks["dock"]).sign(b"dock" + _transcript(sent, body)))
    return device, json.loads(body)


def test_device_finishes_the_handshake_a_dock_started_over(cable, ks):
    dock_link, device_link = cable
    device, body = _as_dock(dock_link, device_link, ks, restart=True)
    assert next_frame(dock_link, FrameType.AUTH_OK).payload == b"ok"
    session = device.result()
    assert (session.device_id, session.peer_fingerprint) == (DEVICE_ID, fingerprint(ks["dock"].public_key()))


def test_device_refuses_an_auth_signed_by_another_key_and_says_why(cable, ks):
    dock_link, device_link = cable
    device, _ = _as_dock(dock_link, device_link, ks, signer=keys.generate("dock"))
    assert next_frame(dock_link, FrameType.REJECT).payload == AUTH_FAILED
    with pytest.raises(AuthError, match="^the dock's signature does not verify$"):   # the audit log's reason
        device.result()


@pytest.mark.parametrize("window, peer_window_end", [(8, 8), ("8", None), (None, None)])
def test_device_sends_no_more_than_the_docks_window(cable, ks, window, peer_window_end):
    dock_link, device_link = cable
    default = device_link.sender.peer_window_end
    device, _ = _as_dock(dock_link, device_link, ks, window=window)
    next_frame(dock_link, FrameType.AUTH_OK)
    device.result()
    assert device_link.sender.peer_window_end == (peer_window_end or default)


@pytest.mark.parametrize("features, agreed", [
    (["part", "repair1"], ["part", "repair1"]),
    (["repair1", "teleport", 7], ["repair1"]),    # only what the device knows, only strings
    (None, []),                                   # an older dock names none
    ("part", []),                                 # ... or names them wrongly
    ({"part": True}, []),
])
def test_device_agrees_only_the_features_both_ends_know(cable, ks, features, agreed):
    dock_link, device_link = cable
    device, body = _as_dock(dock_link, device_link, ks, features=features)
    next_frame(dock_link, FrameType.AUTH_OK)
    device.result()
    assert body["features"] == agreed
    assert (device_link.sender.recut, device_link.sender.peer_repairs) == ("part" in agreed, "repair1" in agreed)
