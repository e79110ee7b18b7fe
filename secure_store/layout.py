"""Where everything lives under a device root, so no package invents its own paths.

::

    ROOT/
      identity.json          device ID + device public key (for the evidence system)
      config.toml            optional device configuration
      keys/device.key        Ed25519 device signing key, mode 0600 (the only private key)
      keys/device.pub        its public half
      keys/agency.pub        X25519 HPKE recipient (the agency's evidence system)
      keys/vendor.pub        Ed25519 firmware signing key
      keys/docks/*.pub       Ed25519 keys of enrolled dock stations
      evidence/              sealed segments and their manifests
      audit/                 the hash-chained audit log
      firmware/              A/B slots and boot state
      state/                 small durable device state (clock offset, counters)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DeviceRoot:
    """Paths under one device root directory."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def identity(self) -> Path:
        return self.root / "identity.json"

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def device_key(self) -> Path:
        return self.keys / "device.key"

    @property
    def device_pub(self) -> Path:
        return self.keys / "device.pub"

    @property
    def agency_pub(self) -> Path:
        return self.keys / "agency.pub"

    @property
    def vendor_pub(self) -> Path:
        return self.keys / "vendor.pub"

    @property
    def docks(self) -> Path:
        return self.keys / "docks"

    @property
    def evidence(self) -> Path:
        return self.root / "evidence"

    @property
    def audit(self) -> Path:
        return self.root / "audit"

    @property
    def firmware(self) -> Path:
        return self.root / "firmware"

    @property
    def state(self) -> Path:
        return self.root / "state"
