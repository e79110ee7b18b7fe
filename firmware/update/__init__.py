"""Signed firmware updates: images, A/B slots with anti-rollback, install, and flashing over the dock link.

- ``image``   — the signed image format (docs/FIRMWARE.md): build, verify, inspect.
- ``slots``   — A/B slot state, trial boots and automatic rollback.
- ``install`` — install an image into the inactive slot; the recording flag that blocks it.
- ``flash``   — send an image to a docked device over the authenticated link.
- ``cli``     — ``bodycam provision`` and ``bodycam firmware ...``.

What the device daemon calls is re-exported here, so ``from firmware import update`` then
``update.boot_slot(root)`` reads as it should.
"""

from firmware.update import install
from firmware.update.install import (
    BootResult,
    InstallResult,
    UpdateError,
    UpdateRefused,
    boot_slot,
    clear_recording,
    install_image,
    is_recording,
    mark_healthy,
    set_recording,
    status,
)

__all__ = install.__all__
