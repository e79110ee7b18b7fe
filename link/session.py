"""Mutual authentication and session keys for the dock link (docs/PROTOCOL.md §4).

The dock opens with HELLO (versions, nonce, ephemeral X25519 key, its Ed25519 key);
the device answers HELLO_REPLY (chosen version, identity, its nonce and ephemeral key)
signed with the device key over the transcript; the dock answers AUTH, its own signature
over the same transcript; the device checks the dock is enrolled and answers AUTH_OK,
tagged with the new session key. Both nonces and both ephemeral keys are in the signed
transcript, so neither signature can be replayed into another session. Session keys come
from HKDF-SHA256 over the X25519 shared secret, salted with the transcript hash: one key
per direction, so a frame cannot be reflected back at its sender.

Handshake frames are resent every ``retry`` seconds until answered; the answering side
repeats its stored answer to a repeated question (``Link.remember_reply``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from link.transport import Link, LinkError, LinkTimeout
from link.protocol import DEFAULT_PAYLOAD, MAX_PAYLOAD, SUPPORTED_VERSIONS, FrameType, LinkFrame, encode_frame
from secure_store.hybrid import SigningKey, VerifyKey
from secure_store.keys import fingerprint, raw_public

log = logging.getLogger(__name__)

LABEL = b"bodycam-dock-handshake"
_SIG = 64
# Optional protocol features, agreed in HELLO / HELLO_REPLY (a peer that does not list one
# never gets it; docs/PROTOCOL.md §3): "part" = PART frames, resends re-cut smaller;
# "repair1" = the receiver repairs frames with a single bit error.
FEATURES = ("part", "repair1")


def _ed25519(key: Any) -> Any:
    """The Ed25519 half of a hybrid key: session authentication is ephemeral, so it stays Ed25519."""
    return key.ed25519 if isinstance(key, (SigningKey, VerifyKey)) else key


def _features(info: dict[str, Any]) -> list[str]:
    offered = info.get("features")
    return sorted(set(FEATURES) & set(f for f in offered if isinstance(f, str))) if isinstance(offered, list) else []


class AuthError(LinkError):
    """The other end could not prove who it is, or is not allowed in."""


class AuthRejected(AuthError):
    """The device sent REJECT, with its reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the device refused this dock: {reason}")
        self.reason = reason


AUTH_FAILED = b"dock authentication failed"   # the device's REJECT when an AUTH does not verify


@dataclass(frozen=True)
class Session:
    """What the handshake established, as seen from one end."""

    version: int
    peer_key: ed25519.Ed25519PublicKey
    peer_fingerprint: str
    max_payload: int
    device_id: str = ""
    firmware_version: str = ""
    peer_cert_pem: str = ""   # the certificate chain the peer presented (PEM), "" if none


def _transcript(hello: bytes, reply_body: bytes) -> bytes:
    return hashlib.sha256(
        LABEL + struct.pack(">I", len(hello)) + hello + struct.pack(">I", len(reply_body)) + reply_body
    ).digest()


def _session_keys(own: x25519.X25519PrivateKey, peer_public: bytes, transcript: bytes) -> tuple[bytes, bytes]:
    """(dock → device key, device → dock key)."""
    shared = own.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
    okm = HKDF(hashes.SHA256(), 64, salt=transcript, info=b"bodycam-dock v1 session keys").derive(shared)
    return okm[:32], okm[32:]


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise AuthError(f"{what} is not JSON") from None
    if not isinstance(obj, dict):
        raise AuthError(f"{what} is not a JSON object")
    return obj


def _hex(obj: dict[str, Any], field: str, size: int, what: str) -> bytes:
    try:
        value = bytes.fromhex(obj[field])
    except (KeyError, TypeError, ValueError):
        raise AuthError(f"{what} lacks a valid {field!r}") from None
    if len(value) != size:
        raise AuthError(f"{what} field {field!r} must be {size} bytes")
    return value


def _reason(payload: bytes) -> str:
    return payload.decode("utf-8", "replace")[:200] or "no reason given"


# --- the dock's side ------------------------------------------------------------------------

def dock_handshake(
    link: Link,
    dock_key: "ed25519.Ed25519PrivateKey | SigningKey",
    *,
    timeout: float = 10.0,
    retry: float = 0.5,
    max_payload: int = DEFAULT_PAYLOAD,
    cert_chain: str = "",
) -> Session:
    """Authenticate both ways as the dock; on success the link is established.

    ``cert_chain``: the dock's certificate chain (PEM), so devices of its agency admit it
    without enrolment; the device's own chain comes back in ``Session.peer_cert_pem``.
    """
    dock_key = _ed25519(dock_key)
    deadline = time.monotonic() + timeout
    hello_before = b""
    for attempt in range(2):   # once more only if the device gave up the handshake we answered
        ephemeral = x25519.X25519PrivateKey.generate()
        hello = json.dumps({
            **({"dock_cert": cert_chain} if cert_chain else {}),
            "protocol": "bodycam-dock",
            "versions": list(SUPPORTED_VERSIONS),
            "nonce": os.urandom(32).hex(),
            "ephemeral": raw_public(ephemeral.public_key()).hex(),
            "dock_key": raw_public(dock_key.public_key()).hex(),
            "max_payload": max_payload,
            "window": link.window,
            "features": list(FEATURES),
        }, sort_keys=True).encode()
        stale = (lambda r, h=hello_before: _answers(h, r)) if attempt else None   # replies to the first HELLO
        reply = _exchange(link, FrameType.HELLO, hello, FrameType.HELLO_REPLY, deadline, retry, skip=stale)
        hello_before = hello
        info, transcript, device_key = _read_reply(hello, reply)
        version = info.get("version")
        if version not in SUPPORTED_VERSIONS:
            raise AuthError(f"device chose protocol version {version!r}; this dock speaks {SUPPORTED_VERSIONS}")
        to_device, to_dock = _session_keys(ephemeral, _hex(info, "ephemeral", 32, "device reply"), transcript)
        auth = dock_key.sign(b"dock" + transcript)
        others: list[LinkFrame] = []
        try:
            _exchange(link, FrameType.AUTH, auth, FrameType.AUTH_OK, deadline, retry, tag_key=to_dock, others=others)
            break
        except AuthRejected as exc:
            # Refused, after the device answered our HELLO a second time, afresh: its first handshake
            # had timed out while its reply was on the way, so our AUTH signs a reply it has dropped.
            if attempt or exc.reason != AUTH_FAILED.decode() or not any(
                    f.type == FrameType.HELLO_REPLY and f.payload != reply and _answers(hello, f.payload)
                    for f in others):
                raise
            log.info("the device answered our HELLO twice (its first handshake timed out); starting over")
    payload = info.get("max_payload")
    payload = payload if isinstance(payload, int) else DEFAULT_PAYLOAD
    window = info.get("window")
    agreed = max(1024, min(max_payload, payload, MAX_PAYLOAD))
    link.establish(to_device, to_dock, window if isinstance(window, int) else None, agreed,
                   features=_features(info))
    session = Session(
        version=version,
        peer_key=device_key,
        peer_fingerprint=fingerprint(device_key),
        max_payload=agreed,
        device_id=str(info.get("device_id", "")),
        firmware_version=str(info.get("firmware", "")),
        peer_cert_pem=info["device_cert"] if isinstance(info.get("device_cert"), str) else "",
    )
    log.info("authenticated device %s (key %s…)", session.device_id, session.peer_fingerprint[:16])
    return session


def _read_reply(hello: bytes, reply: bytes) -> tuple[dict[str, Any], bytes, ed25519.Ed25519PublicKey]:
    """A HELLO_REPLY to ``hello``: (its fields, the transcript, the device's key); AuthError
    unless the device it names signed it over this very HELLO."""
    if len(reply) <= _SIG:
        raise AuthError("device reply too short")
    body, signature = reply[:-_SIG], reply[-_SIG:]
    info = _json(body, "device reply")
    device_key = ed25519.Ed25519PublicKey.from_public_bytes(_hex(info, "device_key", 32, "device reply"))
    transcript = _transcript(hello, body)
    try:
        device_key.verify(signature, b"device" + transcript)
    except InvalidSignature:
        raise AuthError("the device's signature does not verify: not the device it claims to be") from None
    return info, transcript, device_key


def _answers(hello: bytes, reply: bytes) -> bool:
    """True if ``reply`` is a HELLO_REPLY its device signed for ``hello``."""
    try:
        _read_reply(hello, reply)
    except (AuthError, ValueError):
        return False
    return True


def _exchange(link: Link, send_type: FrameType, payload: bytes, want: FrameType, deadline: float, retry: float,
              tag_key: bytes | None = None, skip: Callable[[bytes], bool] | None = None,
              others: list[LinkFrame] | None = None) -> bytes:
    """Send a handshake frame until the wanted answer (or a REJECT) arrives; answers ``skip``
    names are late ones to an earlier frame, not to this one; ``others`` collects the rest."""
    while time.monotonic() < deadline:
        link.send_frame(send_type, payload)
        resend_at = min(deadline, time.monotonic() + retry)
        while (left := resend_at - time.monotonic()) > 0:
            frame = link.next_handshake_frame(left)
            if frame is None:
                break
            if frame.type == FrameType.REJECT:
                raise AuthRejected(_reason(frame.payload))
            if frame.type != want:
                if others is not None:
                    others.append(frame)
                continue
            if tag_key is not None and not frame.tag_ok(tag_key):
                continue
            if skip is not None and skip(frame.payload):
                continue
            return frame.payload
    if want == FrameType.HELLO_REPLY:   # nothing at all came back: most often not docked, or the wrong port
        raise LinkTimeout("no HELLO_REPLY from the device: is the camera docked, and is this its port?")
    raise LinkTimeout(f"no {want.name} from the device")


# --- the device's side ----------------------------------------------------------------------

def device_handshake(
    link: Link,
    device_key: "ed25519.Ed25519PrivateKey | SigningKey",
    device_id: str,
    enrolled_docks: Iterable[ed25519.Ed25519PublicKey],
    *,
    firmware_version: str = "",
    wait: float | None = None,
    timeout: float = 10.0,
    max_payload: int = DEFAULT_PAYLOAD,
    cert_chain: str = "",
    dock_trust: Callable[[bytes, str], ed25519.Ed25519PublicKey | None] | None = None,
) -> Session:
    """Wait up to ``wait`` seconds for a dock (None: forever), then authenticate it.

    A dock is admitted if enrolled, or if ``dock_trust(raw key, its certificate chain PEM)``
    returns its key (certified by this device's agency); ``cert_chain`` is the device's own.
    """
    device_key = _ed25519(device_key)
    enrolled = {raw_public(key): _ed25519(key) for key in enrolled_docks}
    start = time.monotonic()
    hello_frame = None
    while hello_frame is None:
        if wait is not None and time.monotonic() - start > wait:
            raise LinkTimeout("no dock said hello")
        frame = link.next_handshake_frame(0.5)
        if frame is not None and frame.type == FrameType.HELLO:
            hello_frame = frame
    deadline = time.monotonic() + timeout
    while True:
        hello = hello_frame.payload
        info = _json(hello, "dock hello")
        versions = info.get("versions")
        versions_offered = versions if isinstance(versions, list) else []
        common = {v for v in versions_offered if type(v) is int} & set(SUPPORTED_VERSIONS)
        if not common:
            link.send_frame(FrameType.REJECT, b"no common protocol version")
            raise AuthError(f"dock offers protocol versions {versions!r}; device speaks {SUPPORTED_VERSIONS}")
        dock_public = _hex(info, "dock_key", 32, "dock hello")
        dock_key = enrolled.get(dock_public)
        if dock_key is None and dock_trust is not None and isinstance(info.get("dock_cert"), str):
            dock_key = _ed25519(dock_trust(dock_public, info["dock_cert"]))
        if dock_key is None:
            link.send_frame(FrameType.REJECT, b"dock not enrolled on this device")
            raise AuthError(f"dock {hashlib.sha256(dock_public).hexdigest()[:16]}… is not enrolled")
        _hex(info, "nonce", 32, "dock hello")
        ephemeral = x25519.X25519PrivateKey.generate()
        offered = info.get("max_payload")
        payload = max(1024, min(max_payload, offered if isinstance(offered, int) else DEFAULT_PAYLOAD))
        body = json.dumps({
            "version": max(common),
            "device_id": device_id,
            "device_key": raw_public(device_key.public_key()).hex(),
            "firmware": firmware_version,
            **({"device_cert": cert_chain} if cert_chain else {}),
            "nonce": os.urandom(32).hex(),
            "ephemeral": raw_public(ephemeral.public_key()).hex(),
            "max_payload": payload,
            "window": link.window,
            "features": _features(info),
        }, sort_keys=True).encode()
        transcript = _transcript(hello, body)
        signed = body + device_key.sign(b"device" + transcript)
        link.remember_reply(FrameType.HELLO, hello, encode_frame(FrameType.HELLO_REPLY, 0, signed))
        link.send_frame(FrameType.HELLO_REPLY, signed)
        auth = None
        while auth is None:
            frame = link.next_handshake_frame(max(0.0, deadline - time.monotonic()))
            if frame is None:
                raise LinkTimeout("the dock did not finish the handshake")
            if frame.type == FrameType.HELLO and frame.payload != hello:
                hello_frame = frame  # the dock started over
                break
            if frame.type == FrameType.AUTH:
                auth = frame.payload
        if auth is None:
            continue
        try:
            dock_key.verify(auth, b"dock" + transcript)
        except InvalidSignature:
            link.send_frame(FrameType.REJECT, AUTH_FAILED)
            raise AuthError("the dock's signature does not verify") from None
        to_device, to_dock = _session_keys(ephemeral, _hex(info, "ephemeral", 32, "dock hello"), transcript)
        window = info.get("window")
        link.establish(to_dock, to_device, window if isinstance(window, int) else None, payload,
                       features=_features(info))
        ok = encode_frame(FrameType.AUTH_OK, 0, b"ok", to_dock)
        link.remember_reply(FrameType.AUTH, auth, ok)
        link.send_frame(FrameType.AUTH_OK, b"ok", to_dock)
        session = Session(version=max(common), peer_key=dock_key, peer_fingerprint=fingerprint(dock_key),
                          max_payload=payload, device_id=device_id, firmware_version=firmware_version,
                          peer_cert_pem=info["dock_cert"] if isinstance(info.get("dock_cert"), str) else "")
        log.info("dock %s… authenticated", session.peer_fingerprint[:16])
        return session
