"""What a dock station trusts: its agency's root, the revocation lists, and its own certificate.

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

from secure_store import pki
from secure_store.admission import admit_device, store_chain

log = logging.getLogger(__name__)


@dataclass
class DockTrust:
    """``root``: the agency root (None: pin each device's first key); ``cert_chain``: this dock's chain (PEM)."""

    root: x509.Certificate | None = None
    crls: list = field(default_factory=list)
    cert_chain: str = ""
    accept_new_key: bool = False

    @classmethod
    def load(cls, root: Path | None = None, crls: list[Path] = (), cert: Path | None = None,
             accept_new_key: bool = False) -> "DockTrust":
        """From files (PkiError, one line, if one is not what it should be)."""
        root_cert = pki.read_certs(root)[0] if root else None
        if root_cert is not None:
            pki.check_root(root_cert, str(root))
        return cls(root_cert, pki.read_crls(crls), Path(cert).read_text() if cert else "", accept_new_key)

    def admit(self, device_dir: Path, session, dock_key: ed25519.Ed25519PrivateKey) -> str:
        """Admit the session's device (AdmissionError otherwise); returns its certificate fingerprint or ""."""
        fp = admit_device(device_dir, session.device_id, session.peer_key, session.peer_cert_pem,
                          self.root, self.crls, self.accept_new_key)
        if self.cert_chain:  # so that receipts verify against the root in this very directory
            store_chain(device_dir, "dock", dock_key.public_key(), self.cert_chain)
        return fp

    def crl_pems(self) -> list[str]:
        """The agency's revocation lists, as the device's ``crl`` command takes them."""
        return [crl.public_bytes(serialization.Encoding.PEM).decode() for crl in self.crls]
