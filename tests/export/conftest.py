"""Fixtures for the export tests: a device recording real H.264, and an agency PKI for C2PA."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hw_sim.camera import SimCamera
from recorder.encoders import PyAVEncoder
from recorder.segmenter import Segmenter
from secure_store import keys
from secure_store.audit import AuditLog, Event
from secure_store.layout import DeviceRoot
from secure_store.store import EvidenceStore

WIDTH, HEIGHT, FPS = 256, 144, 10
DEVICE = "CAM-0042"
UTC0 = 1_760_000_000.0  # the device clock at frame timestamp 0


class Device:
    """A provisioned device root with its keys, store and audit log."""

    def __init__(self, root: Path) -> None:
        self.root = DeviceRoot(root)
        self.signing_key = Ed25519PrivateKey.generate()
        self.agency_key = X25519PrivateKey.generate()
        self.root.keys.mkdir(parents=True)
        self.now = UTC0
        self.audit = AuditLog(self.root.audit, self.signing_key, DEVICE, clock=lambda: self.now)
        self.store = EvidenceStore(self.root, device_id=DEVICE, signing_key=self.signing_key,
                                   agency_public_key=self.agency_key.public_key(), audit=self.audit,
                                   clock=lambda: self.now, reserve_bytes=0)

    def record(self, recording_id: str, first: int, count: int, markers: dict[int, str] = {}, **kw) -> None:
        self.record_frames(recording_id, range(first, first + count), markers, **kw)

    def record_frames(self, recording_id: str, numbers, markers: dict[int, str] = {}, *,
                      segment_s: float = 1.0, power_cut: bool = False, **start_details) -> None:
        """Sim camera frames ``numbers`` → libx264 → segmenter → sealer (→ power cut: never closed)."""
        camera = SimCamera(WIDTH, HEIGHT, FPS)
        segmenter = Segmenter(self.store.open_sealer(), recording_id, segment_s=segment_s)
        self.audit.append(Event.RECORD_START, recording=recording_id, **start_details)
        encoder = PyAVEncoder(segmenter, WIDTH, HEIGHT, FPS, bitrate=300_000)
        for number in numbers:
            ts = camera.timestamp_us(number)
            self.now = UTC0 + ts / 1e6
            encoder.encode(camera.render(number), ts)
            if number in markers:
                segmenter.add_marker(markers[number], ts)
        if power_cut:
            return  # the GOP in flight and the open segment's manifest are lost with the power
        encoder.close()
        segmenter.close()
        self.audit.append(Event.RECORD_STOP, recording=recording_id, reason="button:hold",
                          segments=segmenter.segments_begun)

    def reboot(self) -> list[str]:
        """A new store and audit log over the same root, as after a power cut; runs recovery."""
        self.audit = AuditLog(self.root.audit, self.signing_key, DEVICE, clock=lambda: self.now)
        self.store = EvidenceStore(self.root, device_id=DEVICE, signing_key=self.signing_key,
                                   agency_public_key=self.agency_key.public_key(), audit=self.audit,
                                   clock=lambda: self.now, reserve_bytes=0)
        return self.store.recover()

    def offload(self, dest: Path) -> Path:
        """What a dock holds after a pull: evidence files, the audit log, the device public key."""
        dest.mkdir()
        for item in self.store.list_evidence():
            target = dest / item.name
            target.parent.mkdir(exist_ok=True)
            shutil.copyfile(self.store.evidence_path(item.name), target)
        (dest / "device.pub").write_bytes(keys.public_pem(self.signing_key.public_key()))
        return dest


class AgencyPki:
    """Agency root -> intermediate -> export certificate (Ed25519, or ES256 for the export key), as PEM files."""

    def __init__(self, directory: Path, root_name: str = "Test Agency Root", intermediate: bool = True,
                 es256: bool = False) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        root_key, inter_key, self.export_key = (Ed25519PrivateKey.generate() for _ in range(3))
        if es256:  # an ECDSA P-256 export key under the Ed25519 agency CA
            self.export_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _cert(root_key, root_name, root_key, None, ca=True)
        self._root_key = root_key
        inter = _cert(inter_key, "Test Agency Export CA", root_key, self.root, ca=True)
        if intermediate:
            export = _cert(self.export_key, "Test Agency Evidence Export", inter_key, inter, ca=False)
        else:  # the export certificate issued by the root itself
            export = _cert(self.export_key, "Test Agency Evidence Export", root_key, self.root, ca=False)
        self.root_pem, self.chain = directory / "root.pem", directory / "export-chain.pem"
        self.key = directory / "export.key"
        self.root_pem.write_bytes(_pem(self.root))
        self.chain.write_bytes(_pem(export) + (_pem(inter) if intermediate else b""))
        self.key.write_bytes(self.export_key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _cert(key, common_name: str, issuer_key, issuer: x509.Certificate | None, ca: bool) -> x509.Certificate:
    """What C2PA asks of each: SKI/AKI, CA flags and key usage; the signer also an EKU it accepts."""
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Agency")])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject if issuer else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False, key_agreement=False,
                                            key_cert_sign=ca, crl_sign=ca, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                              critical=False))
    if not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
    return builder.sign(issuer_key, None)


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> AgencyPki:
    return AgencyPki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def make_pki():
    """``make_pki(directory, root_name, intermediate=True, es256=False)`` → another agency's PKI."""
    return AgencyPki


@pytest.fixture(scope="session")
def make_device():
    """``make_device(path)`` → a Device (test modules cannot import conftest under importlib mode)."""
    return Device


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One device, two recordings (the first with markers and a pre-event-sized start)."""
    base = tmp_path_factory.mktemp("export")
    device = Device(base / "device")
    device.audit.append(Event.CLOCK_SYNC, dock="dock-1", step_us=-1200)  # an older sync, then the one in force
    device.audit.append(Event.CLOCK_SYNC, dock="dock-1", step_us=350)
    device.record("rec-1", 0, 35, {4: "door opened", 22: "arrest"}, trigger="button", pre_event_s=1.0)
    device.record("rec-2", 100, 12)
    pulled = device.offload(base / "pulled")
    agency = base / "agency.key"
    agency.write_bytes(keys.private_pem(device.agency_key))
    return device, pulled, agency
