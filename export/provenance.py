"""C2PA Content Credentials for exported MP4s: sign with the agency export certificate, check.

A court, a newsroom or a player that reads C2PA can tell from the MP4 alone who exported it
(the agency's export certificate, chained to the agency root), from which sealed segments
(one ingredient per segment, named by its signed manifest's SHA-256), what span of UTC it
shows, what set the clock, where the markers are, and that the video was repackaged, not
re-encoded. The manifest's hard binding covers every byte of the MP4 except the C2PA box
itself, so any change to the file reads ``Invalid``.

The private key never leaves ``ExportSigner.sign``: c2pa calls it back with the bytes to
sign, so an HSM-backed signer only has to replace that one method.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from export.errors import ExportError

log = logging.getLogger(__name__)

ASSERTION_LABEL = "org.bodycam.evidence"
MP4_MIME = "video/mp4"
GENERATOR = "bodycam"
DIGITAL_CAPTURE = "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"
MAX_PEM = 1 << 20
IO_BUFFER = 1 << 20  # c2pa streams the MP4 through Python file objects: big buffers halve the signing time


class SignerError(ExportError):
    """The export certificate or key cannot be used; the message is one line."""

    exit_code = 1


class ExportSigner:
    """The agency export certificate chain and the key that signs for it (Ed25519 or ES256).

    ``sign`` is the one place the key is used; it is what c2pa calls back, so moving the key
    into an HSM means replacing this method, nothing else.
    """

    def __init__(self, chain_pem: bytes, private_key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> None:
        try:
            certs = x509.load_pem_x509_certificates(chain_pem)
        except ValueError:
            raise SignerError("export certificate chain: not PEM certificates") from None
        if isinstance(private_key, ed25519.Ed25519PrivateKey):
            self.algorithm = "Ed25519"
        elif isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(private_key.curve, ec.SECP256R1):
            self.algorithm = "ES256"
        else:
            raise SignerError("export key must be Ed25519 or ECDSA P-256 (ES256)")
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if private_key.public_key().public_bytes(*spki) != certs[0].public_key().public_bytes(*spki):
            raise SignerError("export key does not match the first certificate of the chain")
        self.certificates = certs
        self.chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs).decode()
        self._key = private_key

    @classmethod
    def from_files(cls, chain: Path, key: Path) -> "ExportSigner":
        """Load ``--export-cert CHAIN.pem`` (export cert first, then intermediates) and ``--export-key``."""
        chain_pem, key_pem = read_pem(chain, "export certificate"), read_pem(key, "export key")
        try:
            private_key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError):
            raise SignerError(f"{key}: not an unencrypted PEM private key") from None
        return cls(chain_pem, private_key)  # type: ignore[arg-type]

    @property
    def subject(self) -> str:
        return self.certificates[0].subject.rfc4514_string()

    @property
    def issuer(self) -> str:
        return self.certificates[0].issuer.rfc4514_string()

    def sign(self, data: bytes) -> bytes:
        """The signature over ``data`` (the COSE Sig_structure c2pa hands us), as COSE wants it: 64 raw bytes."""
        if self.algorithm == "Ed25519":
            return self._key.sign(data)
        r, s = decode_dss_signature(self._key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def read_pem(path: Path, what: str) -> bytes:
    """A PEM file's bytes, or one clear SignerError."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PEM + 1)
    except OSError as exc:
        raise SignerError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    if len(data) > MAX_PEM:
        raise SignerError(f"{path}: {what} file too large")
    return data


def manifest_definition(title: str, facts: dict[str, Any]) -> dict[str, Any]:
    """The C2PA manifest for one export: actions, the evidence assertion, one ingredient per segment.

    ``facts`` is the evidence assertion's body (built by the exporter). C2PA stores assertions
    as CBOR and turns arrays of bare numbers into byte strings, so every list in it holds
    objects or strings.
    """
    segments = facts["segments"]
    when = facts["start_utc"]
    return {
        "claim_generator_info": [{"name": GENERATOR, "version": _version()}],
        "title": title,
        "format": MP4_MIME,
        "assertions": [
            {"label": "c2pa.actions.v2", "data": {"actions": [
                {"action": "c2pa.created", "digitalSourceType": DIGITAL_CAPTURE, "when": when,
                 "description": f"recorded by body-worn camera {facts['device']['device_id']}, sealed and "
                                f"signed on the device ({len(segments)} segment(s))"},
                {"action": "c2pa.repackaged",
                 "description": "decrypted and remuxed into MP4 without re-encoding: every H.264 access unit "
                                "is the one the camera sealed"},
            ]}},
            {"label": ASSERTION_LABEL, "data": facts},
        ],
        "ingredients": [
            {"title": s["file"], "format": "application/octet-stream", "relationship": "componentOf",
             "instance_id": f"bodycam:manifest-sha256:{s['manifest_sha256']}",
             "description": f"sealed segment {s['segment_seq']} (recording index {s['index']}): "
                            f"{s['first_utc']} to {s['last_utc']}, {s['frames']} frames; "
                            f"signed manifest SHA-256 {s['manifest_sha256']}"}
            for s in segments
        ],
    }


@functools.cache
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bodycam")
    except PackageNotFoundError:
        return "unknown"


def sign_mp4(source: Path, dest: Path, signer: ExportSigner, manifest: dict[str, Any]) -> bytes:
    """Write ``source`` with the C2PA manifest embedded to ``dest`` (a new file); returns the manifest bytes."""
    import c2pa

    alg = c2pa.C2paSigningAlg.ED25519 if signer.algorithm == "Ed25519" else c2pa.C2paSigningAlg.ES256
    c2pa_signer = c2pa.Signer.from_callback(signer.sign, alg, signer.chain_pem)
    try:
        with (c2pa.Builder(manifest) as builder, open(source, "rb", buffering=IO_BUFFER) as src,
              open(dest, "xb", buffering=IO_BUFFER) as dst):
            manifest_bytes = builder.sign(c2pa_signer, MP4_MIME, src, dst)
            dst.flush()
    except c2pa.C2paError as exc:
        raise SignerError(f"C2PA signing failed: {_one_line(exc)}") from None
    finally:
        c2pa_signer.close()
    return manifest_bytes


@dataclass
class CredentialCheck:
    """What a C2PA reader says about an MP4, against a given trust root (or none)."""

    state: str  # "Trusted", "Valid" (signature fine, signer not chained to the root), "Invalid", "absent"
    signer: str = ""
    failures: list[str] = field(default_factory=list)
    evidence: dict[str, Any] | None = None
    ingredients: list[dict[str, Any]] = field(default_factory=list)

    @property
    def trusted(self) -> bool:
        return self.state == "Trusted"


def check_mp4(path: Path, trust_root_pem: str | None = None) -> CredentialCheck:
    """Read and validate the MP4's C2PA manifest; with a root, ``Trusted`` means chained to it."""
    import c2pa

    context = None
    if trust_root_pem:
        try:
            x509.load_pem_x509_certificates(trust_root_pem.encode())
            context = c2pa.Context.from_dict({"trust": {"trust_anchors": trust_root_pem}})
        except (ValueError, c2pa.C2paError):
            raise SignerError("trust root: not a PEM certificate c2pa accepts") from None
    try:
        with open(path, "rb", buffering=IO_BUFFER) as f:
            reader = c2pa.Reader(MP4_MIME, f, context=context) if context else c2pa.Reader(MP4_MIME, f)
            with reader:
                store = json.loads(reader.json())
    except c2pa.C2paError as exc:
        text = _one_line(exc)
        if "ManifestNotFound" in type(exc).__name__ or "no JUMBF" in text or "not found" in text.lower():
            return CredentialCheck("absent", failures=[text])
        return CredentialCheck("Invalid", failures=[text])
    finally:
        if context is not None:
            context.close()
    active = store.get("manifests", {}).get(store.get("active_manifest", ""), {})
    results = store.get("validation_results", {}).get("activeManifest", {})
    failures = [f"{f.get('code')}: {f.get('explanation', '')}" for f in results.get("failure", [])]
    evidence = next((a["data"] for a in active.get("assertions", []) if a.get("label") == ASSERTION_LABEL), None)
    info = active.get("signature_info", {})
    signer = f"{info.get('common_name', '?')} (issuer {info.get('issuer', '?')})" if info else ""
    return CredentialCheck(store.get("validation_state", "Invalid"), signer, failures, evidence,
                           active.get("ingredients", []))


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
