"""Shared fixtures for the device tests: a root provisioned with real keys, as a technician would."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from firmware.provision import provision
from secure_store import keys


@pytest.fixture
def provision_sim_device(tmp_path: Path) -> Callable[[str], tuple[Path, dict[str, Path]]]:
    """``provision_sim_device(device_id)`` -> (device root, key files): agency, vendor and dock key pairs
    under ``tmp_path/keys``, the dock enrolled, the root at ``tmp_path/device``."""
    def make(device_id: str) -> tuple[Path, dict[str, Path]]:
        key_dir = tmp_path / "keys"
        key_dir.mkdir()
        made: dict[str, Path] = {}
        for kind in ("agency", "vendor", "dock"):
            made[kind], made[kind + "_pub"] = keys.write_keypair(kind, key_dir / kind)
        root = tmp_path / "device"
        provision(root, device_id, made["agency_pub"], made["vendor_pub"], [made["dock_pub"]])
        return root, made
    return make
