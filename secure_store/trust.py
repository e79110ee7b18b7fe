"""Finding the device public key that evidence should verify against.

A verifier trusts a device key given on the command line, or else one found
beside the evidence: ``identity.json`` as provisioning writes it (``device_id``,
``public_key_pem``, ``fingerprint``) or ``device.pub`` / ``keys/device.pub`` in the evidence directory
or one of its parents (a device root copied whole, or a dock's export).

Every key comes out as a ``hybrid.VerifyKey``: Ed25519, plus ML-DSA-65 when the key is
hybrid (a two-block key, or a certificate with a companion that passed), so the rules that
check signatures know which signatures each key must have made.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from secure_store import hybrid, keys
from secure_store.errors import FormatError
from secure_store.sources import as_path

SEARCH_PARENTS = 3
MAX_IDENTITY_BYTES = 64 * 1024


@dataclass(frozen=True)
class DeviceKey:
    """A device's current key, its ID if known, and the keys it had before re-provisioning."""

    key: hybrid.VerifyKey
    device_id: str | None
    source: Path
    retired: tuple[hybrid.VerifyKey, ...] = ()

    @property
    def all(self) -> tuple[hybrid.VerifyKey, ...]:
        return (self.key, *self.retired)


def _no_repeats(pairs: list) -> dict:
    keys_seen = [k for k, _ in pairs]
    if len(set(keys_seen)) != len(keys_seen):
        raise ValueError("a key is repeated")
    return dict(pairs)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_identity(data: bytes, source: str = "identity.json") -> tuple[str, hybrid.VerifyKey]:
    """Device ID and public key (one Ed25519 block, or Ed25519 then ML-DSA-65) from an identity.json."""
    if len(data) > MAX_IDENTITY_BYTES:
        raise FormatError(f"{source}: too large for an identity file")
    try:
        doc = json.loads(data, object_pairs_hook=_no_repeats, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{source}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise FormatError(f"{source}: not a JSON object")
    device_id = doc.get("device_id")
    if not isinstance(device_id, str) or not device_id:
        raise FormatError(f"{source}: missing device_id")
    pem = doc.get("public_key_pem")  # FORMAT.md K3: the one field a verifier reads the key from
    if not isinstance(pem, str):
        raise FormatError(f"{source}: no device public key (public_key_pem)")
    try:
        key = hybrid.parse_verify_key(pem.encode("utf-8", "replace"))
    except hybrid.HybridKeyError as exc:
        raise FormatError(f"{source}: public_key_pem is not an Ed25519 (or Ed25519 + ML-DSA-65) public key: "
                          f"{exc}") from None
    fp = doc.get("fingerprint")
    if fp is not None and fp != keys.fingerprint(key):
        raise FormatError(f"{source}: fingerprint does not match the public key")
    return device_id, key


def identity_json(device_id: str, key: ed25519.Ed25519PublicKey | hybrid.VerifyKey) -> bytes:
    """The identity.json a verifier reads (provisioning may add more fields)."""
    doc = {"device_id": device_id, "public_key_pem": keys.public_pem(key).decode(),
           "fingerprint": keys.fingerprint(key)}
    return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"


def find_device_key(directory: Path) -> DeviceKey | None:
    """The device key beside ``directory`` or in one of its parents; None if none is there."""
    directory = as_path(directory).resolve()
    for d in [directory, *directory.parents][:SEARCH_PARENTS + 1]:
        identity = d / "identity.json"
        if identity.is_file():
            try:
                with identity.open("rb") as f:
                    data = f.read(MAX_IDENTITY_BYTES + 1)
            except OSError as exc:
                raise FormatError(f"{identity}: cannot read ({exc.strerror})") from None
            device_id, key = parse_identity(data, str(identity))
            listed = json.loads(data, object_pairs_hook=_no_repeats).get("retired_device_keys")
            allowed = {fp for fp in listed if isinstance(fp, str)} if isinstance(listed, list) else set()
            return DeviceKey(key, device_id, identity, _retired_keys(d, allowed))
        for pub in (d / "device.pub", d / "keys" / "device.pub"):
            if pub.is_file():
                try:
                    return DeviceKey(keys.load_verify_key(pub, "device"), None, pub, _retired_keys(d, None))
                except keys.KeyFileError as exc:
                    raise FormatError(str(exc)) from None
    return None


def _retired_keys(d: Path, allowed: set[str] | None) -> tuple[hybrid.VerifyKey, ...]:
    """Earlier device keys kept by re-provisioning (``keys/retired/device-*.pub``).

    With an identity.json only the fingerprints it lists as ``retired_device_keys`` are trusted.
    """
    found = []
    for pub in sorted([*d.glob("keys/retired/device-*.pub"), *d.glob("retired/device-*.pub")]):
        try:
            key = keys.load_verify_key(pub, "device")
        except keys.KeyFileError as exc:
            raise FormatError(str(exc)) from None
        if allowed is None or keys.fingerprint(key) in allowed:
            found.append(key)
    return tuple(found)


# --- which keys a verifier trusts for one device directory, and why ---------------------------

CERTS_DIR = "certs"


@dataclass
class DeviceTrust:
    """The device keys trusted for one device directory, and what that trust rests on.

    ``anchored`` is True only when every key came from a certificate that chained to the
    agency root the verifier was given; ``source`` says in words where the keys came from.
    ``ids`` maps a key fingerprint (hex) to the device ID its certificate names (None: any).
    """

    keys: list[hybrid.VerifyKey]
    ids: dict[str, str | None]
    device_id: str | None
    anchored: bool
    source: str
    root_fingerprint: str | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    root_mldsa65_fingerprint: str | None = None

    @property
    def signatures(self) -> str | None:
        """``ed25519+mldsa65`` when every trusted key is hybrid, ``ed25519`` when none is, else ``mixed``;
        None without a trusted key."""
        kinds = {k.hybrid for k in self.keys}
        if not kinds:
            return None
        return "mixed" if len(kinds) > 1 else "ed25519+mldsa65" if kinds == {True} else "ed25519"

    def to_json(self) -> dict:
        return {"anchored": self.anchored, "source": self.source, "root_sha256": self.root_fingerprint,
                "root_mldsa65_sha256": self.root_mldsa65_fingerprint, "signatures": self.signatures,
                "device_id": self.device_id, "device_keys": sorted(self.ids),
                "device_keys_mldsa65": sorted(k.fingerprint() for k in self.keys if k.hybrid)}


def cert_chains(device_dir: Path) -> list[tuple[str, list]]:
    """Every ``certs/*.pem`` chain (leaf first) of a device directory, with its file name."""
    from secure_store import pki

    d = as_path(device_dir) / CERTS_DIR
    out = []
    for path in sorted(d.glob("*.pem")) if d.is_dir() else []:
        if path.name.endswith(".crl.pem"):
            continue
        out.append((f"{CERTS_DIR}/{path.name}", pki.read_certs(path)))
    return out


def certified_keys(device_dir: Path, role: str, root, crls: list) -> tuple[dict[str, object], list[str]]:
    """Leaf certificates of ``role`` in ``certs/`` that chain to ``root``: {key fp: CertifiedKey}, problems.

    ``root``: one agency root, or ``TrustRoots`` with the ML-DSA-65 root too (then a companion
    certificate in a chain file makes its key hybrid, or the key fails with it).
    """
    from secure_store import pki

    found, problems = {}, []
    try:
        chains = cert_chains(device_dir)
    except pki.PkiError as exc:
        return {}, [str(exc)]
    pool = [c for _, chain in chains for c in chain]
    clashing: set[str] = set()
    for name, chain in chains:
        if pki.role_of(chain[0]) != role:
            continue
        try:
            certified = pki.check_chain(chain, root, role, crls, pool=pool)
        except pki.PkiError as exc:
            problems.append(f"{name}: {exc}")
            continue
        fp, before = certified.key_fingerprint, found.get(certified.key_fingerprint)
        if before is not None and before.hybrid and certified.hybrid and \
                before.verify_key.pem() != certified.verify_key.pem():
            clashing.add(fp)
            problems.append(f"{name}: another ML-DSA-65 companion key than an earlier certificate of key {fp[:16]}")
        if before is None or not before.hybrid:  # a companion that passed is never undone by a file without one
            found[fp] = certified
    for fp in clashing:
        del found[fp]
    return found, problems


def _certified_trust(device_dir: Path, root, crls: list) -> DeviceTrust:
    """K1: the device keys certified by the agency root(s), with what they rest on."""
    from secure_store import pki

    try:
        roots = pki.check_roots(root)
    except pki.PkiError as exc:
        return DeviceTrust([], {}, None, True, "no usable agency root", problems=[str(exc)])
    certified, problems = certified_keys(device_dir, "device", roots, crls)
    ids = {fp: c.name for fp, c in certified.items()}
    trust = DeviceTrust([c.verify_key for c in certified.values()], ids, None, True,
                        f"device certificates chained to agency root {pki.cert_fingerprint(roots.ed25519)[:16]}"
                        + (" and its ML-DSA-65 root" if roots.hybrid else ""),
                        pki.cert_fingerprint(roots.ed25519), problems=problems,
                        root_mldsa65_fingerprint=pki.cert_fingerprint(roots.mldsa65) if roots.hybrid else None)
    if not certified:
        trust.problems.append("no device certificate in certs/ chains to the agency root")
    for fp, c in sorted(certified.items()):
        if c.companion_unchecked:  # W6
            trust.warnings.append(f"device key {fp[:16]} has an ML-DSA-65 companion certificate, but the trust "
                                  "root has no ML-DSA-65 root: checked as Ed25519 only")
        elif roots.hybrid and not c.hybrid:  # W5
            trust.warnings.append(f"device key {fp[:16]} is certified by the Ed25519 root only: its signatures "
                                  "rest on Ed25519 alone")
    names = set(ids.values())
    trust.device_id = names.pop() if len(names) == 1 else None
    return trust


def resolve_trust(device_dir: Path, given: list | None = None,
                  root=None, crls: list | None = None) -> DeviceTrust:
    """Decide which device keys to trust for ``device_dir`` (FORMAT.md, "Trust").

    With an agency root (or ``TrustRoots``): only keys whose device certificate in ``certs/``
    chains to it (and is not revoked); identity.json is not read. Else keys given by the
    verifier (Ed25519 or ``hybrid.VerifyKey``). Else the key beside the evidence
    (identity.json, device.pub), reported as not anchored.
    """
    if root is not None:
        return _certified_trust(device_dir, root, crls or [])
    if given:
        given = [hybrid.as_verify_key(k) for k in given]
        return DeviceTrust(given, {keys.fingerprint(k): None for k in given}, None, False,
                           "device key(s) given to the verifier; not anchored to an agency root")
    try:
        found = find_device_key(device_dir)
    except FormatError as exc:
        return DeviceTrust([], {}, None, False, "no usable device key beside the evidence", problems=[str(exc)])
    if found is None:
        return DeviceTrust([], {}, None, False, "no device key",
                           problems=["no device public key given or found beside the evidence"])
    ids = {keys.fingerprint(k): None for k in found.retired}  # a retired key may have served another ID
    ids[keys.fingerprint(found.key)] = found.device_id
    return DeviceTrust(list(found.all), ids, found.device_id, False,
                       f"device key taken from {found.source.name} beside the evidence; not anchored to an "
                       "agency root (give --trust agency-root.pem)")


def device_cert_fingerprint(device_dir: Path, session) -> str:
    """Hex SHA-256 of the certificate a dock holds for the session's device key; "" if none."""
    from secure_store import pki

    fp = keys.fingerprint(session.peer_key)
    for _, chain in cert_chains(device_dir):
        if pki.role_of(chain[0]) == "device" and keys.fingerprint(chain[0].public_key()) == fp:
            return pki.cert_fingerprint(chain[0])
    return ""


def pulled_device_keys(device_dir: Path,
                       current: ed25519.Ed25519PublicKey | hybrid.VerifyKey) -> list[hybrid.VerifyKey]:
    """The key a dock just admitted and the keys it retired before (identity.json), to verify with:
    the segment before a re-provisioning was signed by the old key. The link names only the
    Ed25519 half; the ML-DSA-65 half comes from identity.json, as admission wrote it."""
    try:
        found = find_device_key(device_dir)
    except FormatError:
        found = None
    current = hybrid.as_verify_key(current)
    fp = keys.fingerprint(current)
    if found is not None and not current.hybrid and keys.fingerprint(found.key) == fp:
        current = found.key
    retired = list(found.retired) if found is not None else []
    return [current, *(k for k in retired if keys.fingerprint(k) != fp)]
