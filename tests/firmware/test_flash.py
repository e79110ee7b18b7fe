"""Firmware over the authenticated dock link: real linked ptys, real handshake, real install."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from firmware.update import image as fwimage
from firmware.cli import main
from firmware.update.flash import FlashError, attach_firmware_commands, flash
from firmware.offload import OffloadServer, load_enrolled_docks
from firmware.provision import open_audit, provision
from firmware.update.slots import load_state, slot_dir
from firmware import update
from hw_sim.link import Faults, LinkedPtys
from secure_store import keys
from secure_store.audit import Event, read_entries
from secure_store.layout import DeviceRoot


@pytest.fixture()
def device(tmp_path):
    for kind in ("agency", "vendor", "dock"):
        keys.write_keypair(kind, tmp_path / kind)
    keys.write_keypair("dock", tmp_path / "stranger")
    root = DeviceRoot(tmp_path / "dev")
    provision(root, "CAM-3", tmp_path / "agency.pub", tmp_path / "vendor.pub", [tmp_path / "dock.pub"])
    vendor = keys.load_private_key(tmp_path / "vendor.key", "vendor")
    src = tmp_path / "src"
    (src / "lib").mkdir(parents=True)
    files = {"app.py": b"print('flashed')\n", "lib/blob.bin": os.urandom(150_000)}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    img = tmp_path / "fw.img"
    fwimage.build_image(src, "2.0.0", vendor, img)
    return tmp_path, root, img, files


class Served:
    """An OffloadServer with the firmware commands, serving one session in a thread."""

    def __init__(self, root: DeviceRoot, port: str, recording=None, **hooks) -> None:
        self.server = OffloadServer(port, store=None, audit=open_audit(root),
                                    device_key=keys.load_private_key(root.device_key, "device"),
                                    device_id="CAM-3", enrolled_docks=load_enrolled_docks(root.docks),
                                    idle_timeout=5.0)
        attach_firmware_commands(self.server, root, recording=recording, **hooks)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.server.serve_session(wait=10.0)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def join(self) -> None:
        self.thread.join(timeout=20)
        assert not self.thread.is_alive()


def test_flash_over_a_noisy_cable_installs_the_image(device):
    tmp, root, img, files = device
    with LinkedPtys(Faults(bit_error_rate=1e-5, drop_rate=2e-6, seed=4)) as cable:
        served = Served(root, cable.a_path)
        reply = flash(cable.b_path, keys.load_private_key(tmp / "dock.key", "dock"), img)
        served.join()
        damage = cable.stats()
    assert damage["bit_errors"] + damage["dropped"] > 0  # the link really had to repair something
    assert (reply["device_id"], reply["slot"], reply["version"]) == ("CAM-3", "b", "2.0.0")
    for rel, data in files.items():
        assert (slot_dir(root, "b") / "files" / rel).read_bytes() == data
    assert load_state(root)["active"] == "b"
    assert not (root.firmware / "upload.img.part").exists()
    events = [(e.event, e.details) for e in read_entries(root.audit)]
    upload = [d for e, d in events if e == "firmware_upload"]
    assert upload and upload[0]["size"] == img.stat().st_size
    assert [d["step"] for e, d in events if e == Event.FIRMWARE_INSTALL] == ["verified", "unpacked", "switched"]
    assert update.boot_slot(root).version == "2.0.0"


def test_tampered_image_over_the_link_is_refused_with_its_reason(device):
    tmp, root, img, _ = device
    blob = bytearray(img.read_bytes())
    blob[-10] ^= 0x40
    bad = tmp / "bad.img"
    bad.write_bytes(blob)
    with LinkedPtys() as cable:
        served = Served(root, cable.a_path)
        with pytest.raises(FlashError, match="tampered file"):
            flash(cable.b_path, keys.load_private_key(tmp / "dock.key", "dock"), bad)
        served.join()
    assert load_state(root)["active"] == "a" and not (root.firmware / "upload.img.part").exists()
    assert [e.event for e in read_entries(root.audit)][-2:] == [Event.FIRMWARE_REJECTED, "offload_end"]


def test_flash_refused_while_recording_and_from_an_unenrolled_dock(device, capsys):
    tmp, root, img, _ = device
    with LinkedPtys() as cable:
        served = Served(root, cable.a_path, recording=lambda: True)
        assert main(["firmware", "flash", "--quiet", "--port", cable.b_path, "--dock-key", str(tmp / "dock.key"),
                     str(img)]) == 1
        served.join()
    assert "recording" in capsys.readouterr().err
    with LinkedPtys() as cable:
        served = Served(root, cable.a_path)
        with pytest.raises(FlashError, match="not enrolled"):
            flash(cable.b_path, keys.load_private_key(tmp / "stranger.key", "dock"), img, handshake_timeout=5)
        served.join()
    assert load_state(root)["active"] == "a" and not (slot_dir(root, "b")).exists()


def test_cli_flash_prints_the_result(device, capsys):
    tmp, root, img, _ = device
    with LinkedPtys() as cable:
        served = Served(root, cable.a_path)
        assert main(["firmware", "flash", "--quiet", "--port", cable.b_path, "--dock-key", str(tmp / "dock.key"),
                     str(img)]) == 0
        served.join()
    assert "device CAM-3: firmware 2.0.0 installed in slot b" in capsys.readouterr().out


def test_install_is_bracketed_by_the_daemons_update_hooks(device):
    tmp, root, img, _ = device
    calls = []

    def refuse() -> None:
        calls.append("begin")
        raise RuntimeError("firmware update refused in state fault")

    with LinkedPtys() as cable:
        served = Served(root, cable.a_path, begin_update=refuse, end_update=lambda ok: calls.append(ok))
        with pytest.raises(FlashError, match="refused in state fault"):
            flash(cable.b_path, keys.load_private_key(tmp / "dock.key", "dock"), img)
        served.join()
    assert calls == ["begin"] and load_state(root)["active"] == "a"
    with LinkedPtys() as cable:
        served = Served(root, cable.a_path, begin_update=lambda: calls.append("begin"),
                        end_update=lambda ok: calls.append(ok))
        assert flash(cable.b_path, keys.load_private_key(tmp / "dock.key", "dock"), img)["slot"] == "b"
        served.join()
    assert calls == ["begin", "begin", True]


def test_out_of_order_or_overlong_data_and_early_install_are_refused(device):
    from dock.client import DeviceError, DockClient

    tmp, root, img, _ = device
    blob = img.read_bytes()

    with LinkedPtys() as cable:
        served = Served(root, cable.a_path)
        with DockClient.connect(cable.b_path, keys.load_private_key(tmp / "dock.key", "dock")) as client:
            with pytest.raises(DeviceError) as info:
                client.call("fw_data", blob=b"x", offset=0)
            assert info.value.code == "no_upload"
            with pytest.raises(DeviceError) as info:
                client.call("fw_begin", size=10**12, sha256="0" * 64)
            assert info.value.code == "bad_size"
            client.call("fw_begin", size=len(blob), sha256=hashlib.sha256(blob).hexdigest())
            client.call("fw_data", blob=blob[:1000], offset=0)
            with pytest.raises(DeviceError) as info:
                client.call("fw_data", blob=blob[2000:3000], offset=2000)
            assert info.value.code == "bad_offset"
            with pytest.raises(DeviceError) as info:
                client.call("fw_install")
            assert info.value.code == "incomplete"
            assert not (root.firmware / "upload.img.part").exists()
            client.call("fw_begin", size=10, sha256="0" * 64)
            with pytest.raises(DeviceError) as info:
                client.call("fw_data", blob=b"y" * 11, offset=0)
            assert info.value.code == "too_long"
            client.call("fw_begin", size=len(blob), sha256="0" * 64)  # announces the wrong digest
            for offset in range(0, len(blob), 8192):
                client.call("fw_data", blob=blob[offset:offset + 8192], offset=offset)
            with pytest.raises(DeviceError) as info:
                client.call("fw_install")
            assert info.value.code == "corrupted"
        served.join()
    assert load_state(root)["active"] == "a"


def test_cable_pulled_mid_transfer_installs_nothing_and_a_rerun_succeeds(device):
    tmp, root, img, files = device
    dock_key = keys.load_private_key(tmp / "dock.key", "dock")
    with LinkedPtys(disconnect_after=60_000) as cable:
        served = Served(root, cable.a_path)
        with pytest.raises(FlashError, match="dock link"):
            flash(cable.b_path, dock_key, img, handshake_timeout=5)
        served.join()
    assert load_state(root)["active"] == "a" and not slot_dir(root, "b").exists()
    assert update.boot_slot(root).slot == "a"  # and boot removes the abandoned upload
    assert not (root.firmware / "upload.img.part").exists()
    with LinkedPtys() as cable:
        served = Served(root, cable.a_path)
        assert flash(cable.b_path, dock_key, img)["version"] == "2.0.0"
        served.join()
    assert (slot_dir(root, "b") / "files" / "app.py").read_bytes() == files["app.py"]
