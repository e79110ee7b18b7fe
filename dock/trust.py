"""What a dock station trusts: its agency's root, the revocation lists, and its own certificate.

A hybrid agency's trust root file holds two roots (Ed25519, then ML-DSA-65): the link itself
is authenticated with Ed25519, but the device's companion certificate is checked at admission
too, so the dock knows (and records in identity.json) the ML-DSA-65 key its evidence is signed with.

Kept apart from the pull so that the pull only asks two questions: may this device in
(``admit``), and which revocation lists go to it (``deliver_crls``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from secure_store import hybrid, pki
from secure_store.companion import TrustRoots
from secure_store.admission import admit_device, store_chain

log = logging.getLogger(__name__)


@dataclass
class DockTrust:
    """``root``: the agency root(s) (None: pin each device's first key); ``cert_chain``: this dock's chain (PEM)."""

    root: x509.Certificate | TrustRoots | None = None
    crls: list = field(default_factory=list)
    cert_chain: str = ""
    accept_new_key: bool = False

    @classmethod
    def load(cls, root: Path | None = None, crls: list[Path] = (), cert: Path | None = None,
             accept_new_key: bool = False) -> "DockTrust":
        """From files (PkiError, one line, if one is not what it should be)."""
        roots = pki.read_roots(root) if root else None  # one root, or both of a hybrid agency
        return cls(roots, pki.read_crls(crls), Path(cert).read_text() if cert else "", accept_new_key)

    def admit(self, device_dir: Path, session, dock_key: ed25519.Ed25519PrivateKey | hybrid.SigningKey) -> str:
        """Admit the session's device (AdmissionError otherwise); returns its certificate fingerprint or ""."""
        fp = admit_device(device_dir, session.device_id, session.peer_key, session.peer_cert_pem,
                          self.root, self.crls, self.accept_new_key)
        if self.cert_chain:  # so that receipts verify against the root in this very directory
            store_chain(device_dir, "dock", hybrid.as_signing_key(dock_key).ed25519.public_key(), self.cert_chain)
        return fp

    def crl_pems(self) -> list[str]:
        """The agency's revocation lists, as the device's ``crl`` command takes them."""
        return [crl.public_bytes(serialization.Encoding.PEM).decode() for crl in self.crls]
