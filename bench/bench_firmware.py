"""Firmware image build / verify / install / verified boot / dock flash, on a 16 MiB image."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

FILES = 128
FILE_BYTES = 128 * 1024  # 16 MiB in all


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def run() -> str:
    from firmware.update import image as fwimage
    from firmware import update
    from firmware.update.flash import attach_firmware_commands, flash
    from firmware.offload import OffloadServer, load_enrolled_docks
    from firmware.provision import open_audit, provision
    from hw_sim.link import LinkedPtys
    from secure_store import hybrid, keys
    from secure_store.layout import DeviceRoot

    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for kind in ("agency", "vendor", "dock"):
            keys.write_keypair(kind, tmp / kind)
        vendor = keys.load_private_key(tmp / "vendor.key", "vendor")
        src = tmp / "src"
        for i in range(FILES):
            path = src / f"pkg{i % 8}" / f"m{i:03d}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(FILE_BYTES))
        total = FILES * FILE_BYTES

        def provisioned(name: str) -> DeviceRoot:
            root = DeviceRoot(tmp / name)
            provision(root, "CAM-B", tmp / "agency.pub", tmp / "vendor.pub", [tmp / "dock.pub"])
            return root

        t, _ = _timed(lambda: fwimage.build_image(src, "2.0.0", vendor, tmp / "fw.img"))
        rows.append(("build + sign", t))
        t, _ = _timed(lambda: fwimage.verify_image(tmp / "fw.img", vendor.public_key()))
        rows.append(("inspect (signature + every hash)", t))
        pq_vendor = hybrid.SigningKey.generate(True)  # format 2: Ed25519 + ML-DSA-65 over the same manifest
        t, _ = _timed(lambda: fwimage.build_image(src, "2.0.0", pq_vendor, tmp / "fw-pq.img"))
        rows.append(("build + sign, hybrid vendor key (format 2)", t))
        t, _ = _timed(lambda: fwimage.verify_image(tmp / "fw-pq.img", pq_vendor.public_key()))
        rows.append(("inspect, hybrid vendor key (both signatures + every hash)", t))
        pq_extra = (tmp / "fw-pq.img").stat().st_size - (tmp / "fw.img").stat().st_size
        root = provisioned("dev")
        t, _ = _timed(lambda: update.install_image(tmp / "fw.img", root))
        rows.append(("install (verify, unpack, fsync, read back, switch)", t))
        t, _ = _timed(lambda: update.boot_slot(root))
        rows.append(("verified boot of the trial slot", t))

        root2 = provisioned("dev2")
        with LinkedPtys() as cable:
            server = OffloadServer(cable.a_path, store=None, audit=open_audit(root2),
                                   device_key=keys.load_private_key(root2.device_key, "device"),
                                   device_id="CAM-B", enrolled_docks=load_enrolled_docks(root2.docks))
            attach_firmware_commands(server, root2)
            thread = threading.Thread(target=server.serve_session, kwargs={"wait": 10.0}, daemon=True)
            thread.start()
            t, _ = _timed(lambda: flash(cable.b_path, keys.load_private_key(tmp / "dock.key", "dock"), tmp / "fw.img"))
            thread.join(timeout=30)
        rows.append(("flash over the dock link (pty, incl. install)", t))

    mib = total / (1 << 20)
    lines = [
        "## Firmware images and updates",
        "",
        f"Image of {FILES} files, {mib:.0f} MiB of random data (`bench/bench_firmware.py`).",
        "",
        "| step | seconds | MiB/s |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {t:.3f} | {mib / t:.0f} |" for name, t in rows]
    lines += ["", "Notes: install reads the image once and the slot back once (SHA-256 both times) and fsyncs "
              "every file and directory; verified boot re-hashes the whole slot at every boot. The dock link "
              "sends one 256 KiB `fw_data` request at a time (the link windows its frames) over a pty with no "
              "baud-rate limit; a real USB serial line bounds it lower. Times vary with the other jobs on the "
              "2 shared cores.", "",
              f"A format-2 image (hybrid vendor key) is {pq_extra} bytes larger than the same image in format 1 "
              "(the 3309-byte ML-DSA-65 signature); its signing and checking cost milliseconds next to hashing "
              "the files."]
    return "\n".join(lines)
