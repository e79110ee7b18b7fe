"""The agency PKI: X.509 certificates with Ed25519 keys, made and checked with cryptography.x509.

An agency root (kept offline) certifies a provisioning intermediate (technicians' stations),
which certifies device and dock keys; the root certifies the vendor's firmware key and the
agency's export key directly. Each leaf names its role in the subject's OU and its holder in
the CN (the device ID for a device). Revocation is a CRL signed by the issuer. docs/FORMAT.md
("Agency PKI") is the normative profile; :func:`check_chain` applies it.

A post-quantum agency (``ca init --pq``) has a second, ML-DSA-65 hierarchy with the same
names; a hybrid key (Ed25519 + ML-DSA-65) gets its Ed25519 certificate as before plus an
ML-DSA-65 *companion* certificate bound to it (``secure_store.companion``).

A CA directory (``bodycam ca init DIR``) holds::

    root.key  root.pem  root.crl.pem                  the agency root (move root.key offline)
    provisioning.key  provisioning.pem  provisioning.crl.pem
    issued/<role>-<name>-<serial hex>.pem             every certificate issued, for revocation
    root-mldsa65.*  provisioning-mldsa65.*            with --pq: the ML-DSA-65 hierarchy
    trust-roots.pem                                   with --pq: both roots, what courts are given
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
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secure_store import hybrid, keys
from secure_store.companion import ED25519, MLDSA65, RootsLike, TrustRoots, algorithm_problem, as_roots, \
    binding_extension, bound_digest, ed25519_digest, key_algorithm
from secure_store.certfiles import MAX_CERT_BYTES, PkiError, cert_fingerprint, chain_pem, common_name, \
    load_certs, pem, read_certs, read_crls, role_of  # noqa: F401 - API: pki.read_certs etc.
from secure_store.durable import write_atomic
from secure_store.sources import as_path

log = logging.getLogger(__name__)

ROLES = ("device", "dock", "vendor", "export")
CA_ROLES = ("root", "provisioning")
ISSUER_OF = {"device": "provisioning", "dock": "provisioning", "vendor": "root", "export": "root",
             "provisioning": "root"}
LIFETIME_DAYS = {"root": 30 * 366, "provisioning": 15 * 366, "device": 10 * 366, "dock": 10 * 366,
                 "vendor": 10 * 366, "export": 25 * 366}
PQ_SUFFIX = "-mldsa65"          # CA file names of the ML-DSA-65 hierarchy: root-mldsa65.pem, ...
TRUST_ROOTS = "trust-roots.pem"  # a hybrid CA's two roots in one file, Ed25519 first
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,63}")
_BACKDATE = dt.timedelta(days=1)  # tolerate a provisioning station whose clock runs a little fast


@dataclass(frozen=True)
class CertifiedKey:
    """A leaf certificate that chained to the trust root: who it names and what it may do."""

    role: str
    name: str                      # the subject CN: the device ID for a device
    key: ed25519.Ed25519PublicKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]   # leaf first, root last
    mldsa65: mldsa.MLDSA65PublicKey | None = None      # from a companion certificate that passed: hybrid
    companion_chain: tuple[x509.Certificate, ...] = ()  # companion first, ML-DSA-65 root last
    companion_unchecked: bool = False    # a companion was presented, but no ML-DSA-65 root was given

    @property
    def verify_key(self) -> hybrid.VerifyKey:
        """What the key's signatures are checked with: both halves when the companion passed."""
        return hybrid.VerifyKey(self.key, self.mldsa65)

    @property
    def hybrid(self) -> bool:
        return self.mldsa65 is not None

    @property
    def certificates(self) -> tuple[x509.Certificate, ...]:
        """Both chains, Ed25519 first: what a chain file holds (``certs/``, ``ca issue --out``)."""
        return self.chain + self.companion_chain

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of the leaf certificate's DER: how receipts name a certificate."""
        return cert_fingerprint(self.certificate)

    @property
    def key_fingerprint(self) -> str:
        return keys.fingerprint(self.key)


# --- reading ----------------------------------------------------------------------------------

def load_roots(data: bytes, source: str) -> TrustRoots:
    """A trust root file: the Ed25519 root, optionally followed by the ML-DSA-65 root (both checked)."""
    certs = load_certs(data, source)
    if len(certs) > 2 or (len(certs) == 2 and key_algorithm(certs[1]) != MLDSA65):
        raise PkiError(f"{source}: a trust root file holds the Ed25519 root, optionally followed by the "
                       "ML-DSA-65 root, and nothing else")
    roots = TrustRoots(*certs)
    check_roots(roots, source)
    return roots


def read_roots(path: str | Path) -> TrustRoots:
    try:
        data = as_path(path).read_bytes()
    except OSError as exc:
        raise PkiError(f"{path}: cannot read ({exc.strerror})") from None
    return load_roots(data, str(path))


# --- checking -------------------------------------------------------------------------------

def _ext(cert: x509.Certificate, cls: type) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def _check_profile(cert: x509.Certificate, role: str, what: str, algorithm: str = ED25519) -> None:
    """The extensions FORMAT.md requires of a certificate of ``role`` in the ``algorithm`` hierarchy."""
    problem = algorithm_problem(cert, algorithm)
    if problem:
        raise PkiError(f"{what}: {problem}")
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


def check_root(root: x509.Certificate, what: str = "trust root", algorithm: str = ED25519) -> None:
    _check_profile(root, "root", what, algorithm)
    _issued_by(root, root, what)


def check_roots(roots: RootsLike, what: str = "trust root") -> TrustRoots:
    """Both roots pass the root profile, each in its own algorithm, with the same subject."""
    try:
        roots = as_roots(roots)
    except ValueError as exc:
        raise PkiError(f"{what}: {exc}") from None
    check_root(roots.ed25519, what)
    if roots.mldsa65 is not None:
        check_root(roots.mldsa65, f"{what} (ML-DSA-65 root)", MLDSA65)
        if roots.mldsa65.subject != roots.ed25519.subject:
            raise PkiError(f"{what}: the ML-DSA-65 root names another agency than the Ed25519 root")
    return roots


def check_chain(chain: list[x509.Certificate], root: RootsLike, role: str,
                crls: Iterable[x509.CertificateRevocationList] = (),
                pool: Iterable[x509.Certificate] = ()) -> CertifiedKey:
    """Check ``chain`` (leaf first; intermediates after it, the root may be included) against ``root``.

    Applies FORMAT.md's profile: Ed25519 throughout; the leaf has ``role``; a device or dock
    leaf is issued by a provisioning intermediate that the root issued; a vendor or export
    leaf is issued by the root; nothing in the chain is on a CRL (given) of its issuer.
    ``root`` may be ``TrustRoots`` with an ML-DSA-65 root: then an ML-DSA-65 companion
    certificate in ``chain`` must pass the same profile in that hierarchy and bind the leaf's
    key (P8), and the result is hybrid. ``pool``: more certificates to find intermediates in.
    Validity periods are not checked here: an expired certificate does not undo what its key
    signed while it was valid (the verifier reports it as a warning).
    """
    if role not in ROLES:
        raise PkiError(f"unknown certificate role {role!r}")
    if not chain:
        raise PkiError(f"no {role} certificate")
    roots = check_roots(root)
    crls, pool = list(crls), [*chain[1:], *pool]
    leaf = chain[0]
    what = f"{role} certificate {common_name(leaf)!r}"
    full = _chain_up(leaf, pool, roots.ed25519, role, crls, what, ED25519)
    companions = [c for c in chain[1:] if key_algorithm(c) == MLDSA65 and role_of(c) == role]
    if not companions:
        return CertifiedKey(role, common_name(leaf) or "", leaf.public_key(), leaf, full)
    if roots.mldsa65 is None:  # nothing to check it against: the key counts as classic (warning W6)
        return CertifiedKey(role, common_name(leaf) or "", leaf.public_key(), leaf, full,
                            companion_chain=tuple(c for c in chain[1:] if key_algorithm(c) == MLDSA65),
                            companion_unchecked=True)
    if len(companions) > 1:
        raise PkiError(f"{what}: {len(companions)} ML-DSA-65 companion certificates in one chain file")
    companion, cwhat = companions[0], f"{what}: its ML-DSA-65 companion certificate"
    _check_profile(companion, role, cwhat, MLDSA65)
    if companion.subject != leaf.subject:
        raise PkiError(f"{cwhat} names another subject ({companion.subject.rfc4514_string()})")
    if bound_digest(companion) != ed25519_digest(leaf.public_key()):
        raise PkiError(f"{cwhat} is not bound to this Ed25519 key" if bound_digest(companion) is not None
                       else f"{cwhat} has no (valid) Ed25519 binding extension")
    cfull = _chain_up(companion, pool, roots.mldsa65, role, crls, cwhat, MLDSA65)
    return CertifiedKey(role, common_name(leaf) or "", leaf.public_key(), leaf, full,
                        companion.public_key(), cfull)


def _chain_up(leaf: x509.Certificate, pool: list[x509.Certificate], root: x509.Certificate, role: str,
              crls: list, what: str, algorithm: str) -> tuple[x509.Certificate, ...]:
    """P3-P6 from ``leaf`` up to ``root`` within one algorithm's hierarchy; the full chain."""
    _check_profile(leaf, role, what, algorithm)
    rest = [c for c in pool if c != root]
    if ISSUER_OF[role] == "provisioning":
        inter = next((c for c in rest if c.subject == leaf.issuer and key_algorithm(c) == algorithm), None)
        iwhat = f"{'ML-DSA-65 ' if algorithm == MLDSA65 else ''}provisioning certificate"
        if inter is None:
            raise PkiError(f"{what}: its {iwhat} is missing from the chain")
        iwhat = f"{what}: its {iwhat} {common_name(inter)!r}" if algorithm == MLDSA65 else \
            f"{iwhat} {common_name(inter)!r}"
        _check_profile(inter, "provisioning", iwhat, algorithm)
        _issued_by(leaf, inter, what)
        _issued_by(inter, root, iwhat)
        _revoked(inter, root, crls, iwhat)
        _revoked(leaf, inter, crls, what)
        return (leaf, inter, root)
    _issued_by(leaf, root, what)
    _revoked(leaf, root, crls, what)
    return (leaf, root)


# --- issuing --------------------------------------------------------------------------------

def _name(role: str, cn: str, org: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_certificate(role: str, cn: str, public_key: ed25519.Ed25519PublicKey | mldsa.MLDSA65PublicKey,
                     issuer_key: ed25519.Ed25519PrivateKey | mldsa.MLDSA65PrivateKey,
                     issuer: x509.Certificate | None, org: str, now: dt.datetime | None = None,
                     binds: ed25519.Ed25519PublicKey | None = None) -> x509.Certificate:
    """One certificate of ``role`` for ``public_key``, signed by the issuer (self-signed for root).

    ``binds``: the Ed25519 key an ML-DSA-65 companion certificate accompanies (P8).
    """
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
    if binds is not None:
        builder = builder.add_extension(binding_extension(binds), critical=False)
    return builder.sign(issuer_key, None)


def make_crl(issuer_key: ed25519.Ed25519PrivateKey | mldsa.MLDSA65PrivateKey, issuer: x509.Certificate,
             revoked: Iterable[tuple[int, dt.datetime]],
             now: dt.datetime | None = None) -> x509.CertificateRevocationList:
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

    @property
    def pq(self) -> bool:
        """True when the CA has the ML-DSA-65 hierarchy that certifies hybrid keys."""
        return self.path(f"root{PQ_SUFFIX}.pem").exists()

    def init(self, org: str, pq: bool = False) -> tuple[x509.Certificate, x509.Certificate]:
        """Make the root and the provisioning intermediate, and their (empty) CRLs.

        ``pq``: also the ML-DSA-65 hierarchy and ``trust-roots.pem``; on an existing classic CA
        it adds just that (an agency moving to hybrid keys keeps its Ed25519 root).
        """
        if self.path("root.pem").exists() or self.path("root.key").exists():
            if not pq or self.pq or self.path(f"root{PQ_SUFFIX}.key").exists():
                raise PkiError(f"{self.dir} already holds a CA; refusing to overwrite it")
            root, inter = self.root, read_certs(self.path("provisioning.pem"))[0]
            org = str(root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value)
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "issued").mkdir(exist_ok=True)
            root, inter = self._hierarchy(org, "", ed25519.Ed25519PrivateKey.generate)
        if pq:
            pq_root, _ = self._hierarchy(org, PQ_SUFFIX, mldsa.MLDSA65PrivateKey.generate)
            write_atomic(self.path(TRUST_ROOTS), TrustRoots(root, pq_root).pem(), 0o644, overwrite=False)
        log.info("CA made in %s: root %s%s", self.dir, cert_fingerprint(root)[:16], " (+ ML-DSA-65)" if pq else "")
        return root, inter

    def _hierarchy(self, org: str, suffix: str, generate) -> tuple[x509.Certificate, x509.Certificate]:
        root_key, inter_key = generate(), generate()
        root = make_certificate("root", f"{org} Root", root_key.public_key(), root_key, None, org)
        inter = make_certificate("provisioning", f"{org} Provisioning", inter_key.public_key(), root_key, root, org)
        for name, key, cert in ((f"root{suffix}", root_key, root), (f"provisioning{suffix}", inter_key, inter)):
            write_atomic(self.path(f"{name}.key"), keys.private_pem(key), 0o600, overwrite=False)
            write_atomic(self.path(f"{name}.pem"), pem(cert), 0o644, overwrite=False)
            write_atomic(self.path(f"{name}.crl.pem"),
                         make_crl(key, cert, []).public_bytes(serialization.Encoding.PEM), 0o644)
        return root, inter

    def _issuer(self, name: str) -> tuple[ed25519.Ed25519PrivateKey | mldsa.MLDSA65PrivateKey, x509.Certificate]:
        cert = read_certs(self.path(f"{name}.pem"))[0]
        want = mldsa.MLDSA65PrivateKey if name.endswith(PQ_SUFFIX) else ed25519.Ed25519PrivateKey
        try:
            key = serialization.load_pem_private_key(self.path(f"{name}.key").read_bytes(), password=None)
        except OSError as exc:
            raise PkiError(f"the {name} CA key is needed: {self.path(name + '.key')}: {exc.strerror}") from None
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise PkiError(f"the {name} CA key is needed: {self.path(name + '.key')} is not a PEM private key") \
                from None
        if not isinstance(key, want):
            raise PkiError(f"the {name} CA key {self.path(name + '.key')} holds a {type(key).__name__}")
        return key, cert

    @property
    def root(self) -> x509.Certificate:
        return read_certs(self.path("root.pem"))[0]

    @property
    def roots(self) -> TrustRoots:
        """What verifiers and docks are given: the Ed25519 root, and the ML-DSA-65 one if any."""
        return TrustRoots(self.root, read_certs(self.path(f"root{PQ_SUFFIX}.pem"))[0] if self.pq else None)

    def issue(self, role: str, name: str,
              public_key: ed25519.Ed25519PublicKey | hybrid.VerifyKey) -> list[x509.Certificate]:
        """Certify ``public_key`` for ``role``; returns the chain (leaf, [intermediate], root).

        A hybrid key gets both certificates: the Ed25519 chain, then the companion's chain.
        """
        if role not in ROLES:
            raise PkiError(f"unknown certificate role {role!r} (expected one of {', '.join(ROLES)})")
        key = hybrid.as_verify_key(public_key) if isinstance(public_key, (hybrid.VerifyKey,
                                                                          ed25519.Ed25519PublicKey)) else None
        if key is None:
            raise PkiError(f"a {role} certificate needs an Ed25519 public key")
        if key.hybrid and role == "export":
            raise PkiError("an export key signs C2PA manifests with Ed25519 alone; give its Ed25519 key")
        if key.hybrid and not self.pq:
            raise PkiError(f"{self.dir} has no ML-DSA-65 hierarchy to certify a hybrid key "
                           f"(add one with `bodycam ca init {self.dir} --pq --org ...`)")
        chain = self._issue(role, name, key.ed25519, "")
        if key.hybrid:
            chain += self._issue(role, name, key.mldsa65, PQ_SUFFIX, binds=key.ed25519)
        return chain

    def _issue(self, role: str, name: str, public_key, suffix: str,
               binds: ed25519.Ed25519PublicKey | None = None) -> list[x509.Certificate]:
        issuer_name = ISSUER_OF[role]
        issuer_key, issuer = self._issuer(issuer_name + suffix)
        root = issuer if issuer_name == "root" else self._issuer("root" + suffix)[1]
        org = str(issuer.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value)
        cert = make_certificate(role, name, public_key, issuer_key, issuer, org, binds=binds)
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
        write_atomic(self.dir / "issued" / f"{role}-{safe}{suffix}-{cert.serial_number:x}.pem", pem(cert), 0o644,
                     overwrite=False)
        return [cert, issuer, root] if issuer_name == "provisioning" else [cert, root]

    def revoke(self, cert: x509.Certificate) -> Path:
        """Add ``cert`` to its issuer's CRL (re-signed); returns the CRL's path."""
        names = [*CA_ROLES, *(f"{n}{PQ_SUFFIX}" for n in CA_ROLES if self.pq)]
        for name in names:
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
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
