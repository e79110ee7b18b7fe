"""The agency PKI: X.509 certificates with Ed25519 keys, made and checked with cryptography.x509.

An agency root (kept offline) certifies a provisioning intermediate (technicians' stations),
which certifies device and dock keys; the root certifies the vendor's firmware key and the
agency's export key directly. Each leaf names its role in the subject's OU and its holder in
the CN (the device ID for a device). Revocation is a CRL signed by the issuer. docs/FORMAT.md
("Agency PKI") is the normative profile; :func:`check_chain` applies it.

A CA directory (``bodycam ca init DIR``) holds::

    root.key  root.pem  root.crl.pem                  the agency root (move root.key offline)
    provisioning.key  provisioning.pem  provisioning.crl.pem
    issued/<role>-<name>-<serial hex>.pem             every certificate issued, for revocation
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secure_store import keys
from secure_store.durable import write_atomic
from secure_store.errors import StoreError
from secure_store.sources import as_path

log = logging.getLogger(__name__)

ROLES = ("device", "dock", "vendor", "export")
CA_ROLES = ("root", "provisioning")
ISSUER_OF = {"device": "provisioning", "dock": "provisioning", "vendor": "root", "export": "root",
             "provisioning": "root"}
LIFETIME_DAYS = {"root": 30 * 366, "provisioning": 15 * 366, "device": 10 * 366, "dock": 10 * 366,
                 "vendor": 10 * 366, "export": 25 * 366}
MAX_CERT_BYTES = 64 * 1024
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,63}")
_BACKDATE = dt.timedelta(days=1)  # tolerate a provisioning station whose clock runs a little fast


class PkiError(StoreError):
    """A certificate or CRL is malformed, does not chain to the trust root, or is revoked."""


@dataclass(frozen=True)
class CertifiedKey:
    """A leaf certificate that chained to the trust root: who it names and what it may do."""

    role: str
    name: str                      # the subject CN: the device ID for a device
    key: ed25519.Ed25519PublicKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]   # leaf first, root last

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of the leaf certificate's DER: how receipts name a certificate."""
        return cert_fingerprint(self.certificate)

    @property
    def key_fingerprint(self) -> str:
        return keys.fingerprint(self.key)


def cert_fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def role_of(cert: x509.Certificate) -> str | None:
    ous = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return str(ous[0].value) if len(ous) == 1 else None


def common_name(cert: x509.Certificate) -> str | None:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if len(cns) == 1 else None


# --- reading ----------------------------------------------------------------------------------

def load_certs(data: bytes, source: str) -> list[x509.Certificate]:
    """Every certificate in a PEM file (PkiError if none, or malformed)."""
    if len(data) > MAX_CERT_BYTES:
        raise PkiError(f"{source}: too large for a certificate file")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise PkiError(f"{source}: not a PEM certificate") from None
    return certs


def read_certs(path: str | Path) -> list[x509.Certificate]:
    try:
        data = as_path(path).read_bytes()
    except OSError as exc:
        raise PkiError(f"{path}: cannot read ({exc.strerror})") from None
    return load_certs(data, str(path))


def read_crls(paths: Iterable[Path]) -> list[x509.CertificateRevocationList]:
    crls = []
    for path in paths:
        try:
            crls.append(x509.load_pem_x509_crl(Path(path).read_bytes()))
        except OSError as exc:
            raise PkiError(f"{path}: cannot read ({exc.strerror})") from None
        except ValueError:
            raise PkiError(f"{path}: not a PEM CRL") from None
    return crls


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def chain_pem(chain: Iterable[x509.Certificate]) -> bytes:
    return b"".join(pem(c) for c in chain)


# --- checking -------------------------------------------------------------------------------

def _ext(cert: x509.Certificate, cls: type) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def _check_profile(cert: x509.Certificate, role: str, what: str) -> None:
    """The extensions FORMAT.md requires of a certificate of ``role``."""
    if not isinstance(cert.public_key(), ed25519.Ed25519PublicKey):
        raise PkiError(f"{what}: key is not Ed25519")
    if cert.signature_algorithm_oid != x509.oid.SignatureAlgorithmOID.ED25519:
        raise PkiError(f"{what}: not signed with Ed25519")
    if role_of(cert) != role:
        raise PkiError(f"{what}: a {role_of(cert) or 'role-less'} certificate where a {role} one is required")
    if common_name(cert) is None or len(cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)) != 1:
        raise PkiError(f"{what}: subject needs exactly one O, one OU and one CN")
    if _ext(cert, x509.SubjectKeyIdentifier) is None:
        raise PkiError(f"{what}: no subjectKeyIdentifier")
    bc, ku = _ext(cert, x509.BasicConstraints), _ext(cert, x509.KeyUsage)
    ca = role in CA_ROLES
    if bc is None or bc.ca != ca:
        raise PkiError(f"{what}: basicConstraints must say CA:{'TRUE' if ca else 'FALSE'}")
    if ku is None or (ku.key_cert_sign if ca else ku.digital_signature) is not True:
        raise PkiError(f"{what}: keyUsage lacks {'keyCertSign' if ca else 'digitalSignature'}")
    if not ca and ku.key_cert_sign:
        raise PkiError(f"{what}: a leaf certificate must not have keyCertSign")
    if not ca and _ext(cert, x509.AuthorityKeyIdentifier) is None:
        raise PkiError(f"{what}: no authorityKeyIdentifier")
    if role == "export":
        eku = _ext(cert, x509.ExtendedKeyUsage)
        if eku is None or ExtendedKeyUsageOID.EMAIL_PROTECTION not in eku:
            raise PkiError(f"{what}: an export certificate needs extendedKeyUsage emailProtection")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise PkiError(f"{what}: not signed by {common_name(issuer)!r}") from None


def _revoked(cert: x509.Certificate, issuer: x509.Certificate,
             crls: Iterable[x509.CertificateRevocationList], what: str) -> None:
    for crl in crls:
        if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer.public_key()):
            continue
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is not None:
            when = entry.revocation_date_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
            raise PkiError(f"{what}: certificate {cert.serial_number:x} was revoked on {when}")


def check_root(root: x509.Certificate, what: str = "trust root") -> None:
    _check_profile(root, "root", what)
    _issued_by(root, root, what)


def check_chain(chain: list[x509.Certificate], root: x509.Certificate, role: str,
                crls: Iterable[x509.CertificateRevocationList] = ()) -> CertifiedKey:
    """Check ``chain`` (leaf first; intermediates after it, the root may be included) against ``root``.

    Applies FORMAT.md's profile: Ed25519 throughout; the leaf has ``role``; a device or dock
    leaf is issued by a provisioning intermediate that the root issued; a vendor or export
    leaf is issued by the root; nothing in the chain is on a CRL (given) of its issuer.
    Validity periods are not checked here: an expired certificate does not undo what its key
    signed while it was valid (the verifier reports it as a warning).
    """
    if role not in ROLES:
        raise PkiError(f"unknown certificate role {role!r}")
    if not chain:
        raise PkiError(f"no {role} certificate")
    crls = list(crls)
    leaf = chain[0]
    what = f"{role} certificate {common_name(leaf)!r}"
    check_root(root)
    _check_profile(leaf, role, what)
    rest = [c for c in chain[1:] if c != root]
    if ISSUER_OF[role] == "provisioning":
        inter = next((c for c in rest if c.subject == leaf.issuer), None)
        if inter is None:
            raise PkiError(f"{what}: its provisioning certificate is missing from the chain")
        _check_profile(inter, "provisioning", f"provisioning certificate {common_name(inter)!r}")
        _issued_by(leaf, inter, what)
        _issued_by(inter, root, f"provisioning certificate {common_name(inter)!r}")
        _revoked(inter, root, crls, f"provisioning certificate {common_name(inter)!r}")
        _revoked(leaf, inter, crls, what)
        full = (leaf, inter, root)
    else:
        _issued_by(leaf, root, what)
        _revoked(leaf, root, crls, what)
        full = (leaf, root)
    return CertifiedKey(role, common_name(leaf) or "", leaf.public_key(), leaf, full)


# --- issuing --------------------------------------------------------------------------------

def _name(role: str, cn: str, org: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_certificate(role: str, cn: str, public_key: ed25519.Ed25519PublicKey,
                     issuer_key: ed25519.Ed25519PrivateKey, issuer: x509.Certificate | None,
                     org: str, now: dt.datetime | None = None) -> x509.Certificate:
    """One certificate of ``role`` for ``public_key``, signed by the issuer (self-signed for root)."""
    if not _NAME_RE.fullmatch(cn):
        raise PkiError(f"name {cn!r} must be 1-64 of A-Z a-z 0-9 . _ - and space")
    now = now or dt.datetime.now(dt.timezone.utc)
    subject = _name(role, cn, org)
    ca = role in CA_ROLES
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(issuer.subject if issuer is not None else subject)
               .public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - _BACKDATE)
               .not_valid_after(now + dt.timedelta(days=LIFETIME_DAYS[role]))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=(1 if role == "root" else 0) if ca else None),
                              critical=True)
               .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False, key_agreement=False,
                                            key_cert_sign=ca, crl_sign=ca, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()), critical=False)
    if role == "export":  # what C2PA validators want of a signing certificate
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                                        critical=False)
    return builder.sign(issuer_key, None)


def make_crl(issuer_key: ed25519.Ed25519PrivateKey, issuer: x509.Certificate,
             revoked: Iterable[tuple[int, dt.datetime]], now: dt.datetime | None = None) -> x509.CertificateRevocationList:
    now = now or dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer.subject)
               .last_update(now).next_update(now + dt.timedelta(days=LIFETIME_DAYS["provisioning"]))
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()), False))
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build())
    return builder.sign(issuer_key, None)


class CertificateAuthority:
    """A CA directory as ``bodycam ca`` keeps it (see the module docstring)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)

    def path(self, name: str) -> Path:
        return self.dir / name

    def init(self, org: str) -> tuple[x509.Certificate, x509.Certificate]:
        """Make the root and the provisioning intermediate, and their (empty) CRLs."""
        if self.path("root.pem").exists() or self.path("root.key").exists():
            raise PkiError(f"{self.dir} already holds a CA; refusing to overwrite it")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "issued").mkdir(exist_ok=True)
        root_key, inter_key = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
        root = make_certificate("root", f"{org} Root", root_key.public_key(), root_key, None, org)
        inter = make_certificate("provisioning", f"{org} Provisioning", inter_key.public_key(), root_key, root, org)
        for name, key, cert in (("root", root_key, root), ("provisioning", inter_key, inter)):
            write_atomic(self.path(f"{name}.key"), keys.private_pem(key), 0o600, overwrite=False)
            write_atomic(self.path(f"{name}.pem"), pem(cert), 0o644, overwrite=False)
            write_atomic(self.path(f"{name}.crl.pem"),
                         make_crl(key, cert, []).public_bytes(serialization.Encoding.PEM), 0o644)
        log.info("CA made in %s: root %s", self.dir, cert_fingerprint(root)[:16])
        return root, inter

    def _issuer(self, name: str) -> tuple[ed25519.Ed25519PrivateKey, x509.Certificate]:
        cert = read_certs(self.path(f"{name}.pem"))[0]
        try:
            key = keys.load_private_key(self.path(f"{name}.key"), "device")  # any Ed25519 private key
        except keys.KeyFileError as exc:
            raise PkiError(f"the {name} CA key is needed: {exc}") from None
        return key, cert

    @property
    def root(self) -> x509.Certificate:
        return read_certs(self.path("root.pem"))[0]

    def issue(self, role: str, name: str, public_key: ed25519.Ed25519PublicKey) -> list[x509.Certificate]:
        """Certify ``public_key`` for ``role``; returns the chain (leaf, [intermediate], root)."""
        if role not in ROLES:
            raise PkiError(f"unknown certificate role {role!r} (expected one of {', '.join(ROLES)})")
        if not isinstance(public_key, ed25519.Ed25519PublicKey):
            raise PkiError(f"a {role} certificate needs an Ed25519 public key")
        issuer_name = ISSUER_OF[role]
        issuer_key, issuer = self._issuer(issuer_name)
        org = str(issuer.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value)
        cert = make_certificate(role, name, public_key, issuer_key, issuer, org)
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
        write_atomic(self.dir / "issued" / f"{role}-{safe}-{cert.serial_number:x}.pem", pem(cert), 0o644,
                     overwrite=False)
        chain = [cert, issuer] if issuer_name == "provisioning" else [cert]
        return chain + [self.root]

    def revoke(self, cert: x509.Certificate) -> Path:
        """Add ``cert`` to its issuer's CRL (re-signed); returns the CRL's path."""
        for name in CA_ROLES:
            key, issuer = self._issuer(name)
            if cert.issuer == issuer.subject and _signed_by(cert, issuer):
                crl_path = self.path(f"{name}.crl.pem")
                old = read_crls([crl_path])[0] if crl_path.exists() else None
                revoked = {r.serial_number: r.revocation_date_utc for r in (old or [])}
                revoked.setdefault(cert.serial_number, dt.datetime.now(dt.timezone.utc))
                crl = make_crl(key, issuer, sorted(revoked.items()))
                write_atomic(crl_path, crl.public_bytes(serialization.Encoding.PEM), 0o644)
                return crl_path
        raise PkiError(f"certificate {common_name(cert)!r} was not issued by this CA")


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False
