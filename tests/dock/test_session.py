"""Who may talk to the device, and what makes it free space: authentication, confirm, time sync."""

from __future__ import annotations

import hashlib
import json

import pytest

from dock.client import DeviceError, DockClient, PullError, pull
from link.session import AuthError
from hw_sim.link import LinkedPtys
from secure_store import keys

DEVICE_ID = "CAM-0042"


def test_unenrolled_dock_is_rejected_with_nothing_listed_or_released(device, keyset, tmp_path):
    device.record(segments=2)
    before = device.evidence()
    out = tmp_path / "archive"
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        with pytest.raises(AuthError, match="not enrolled"):
            pull(cable.b_path, out, keyset.stranger)
        served.join()
    assert isinstance(served.error, AuthError)
    assert device.evidence() == before
    assert not (out / DEVICE_ID).exists()      # the stranger learnt nothing, not even the device ID
    events = [e.event for e in device.events()]
    assert "dock_auth_failed" in events and "offload_start" not in events and "delete" not in events


def test_device_with_no_enrolled_docks_refuses_every_dock(device, keyset, tmp_path):
    device.record(segments=1)
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path, docks=[])
        with pytest.raises(AuthError):
            DockClient.connect(cable.b_path, keyset.dock)
        served.join()
    assert len(device.evidence()) == 2


def test_dock_that_never_confirms_releases_nothing(device, keyset, tmp_path):
    device.record(segments=2)
    before = device.evidence()
    out = tmp_path / "archive"
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        summary = pull(cable.b_path, out, keyset.dock, confirm=False)
        served.join()
    assert summary.confirmed == [] and len(summary.fetched) >= 4
    assert device.evidence() == before
    # a dock that fetches and then vanishes mid-session releases nothing either
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        client = DockClient.connect(cable.b_path, keyset.dock)
        items = client.list_evidence()
        got = bytearray()
        client.fetch(items[0].name, 0, items[0].size, got.extend)
        assert bytes(got) == before[items[0].name]
        cable.unplug()
        served.join()
        client.close()
    assert device.evidence() == before
    assert "delete" not in [e.event for e in device.events()]


def test_confirm_with_a_wrong_digest_is_refused(device, keyset):
    device.record(segments=1)
    before = device.evidence()
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        with DockClient.connect(cable.b_path, keyset.dock) as client:
            client.list_evidence()
            manifest = before["seg-0000000001.manifest"]
            wrong = hashlib.sha256(manifest + b"x").hexdigest()
            with pytest.raises(DeviceError, match="does not match") as refused:
                client.confirm("seg-0000000001.seg", wrong)
            assert refused.value.code == "release_refused"
            with pytest.raises(DeviceError) as malformed:
                client.confirm("seg-0000000001.seg", "not-a-digest")
            assert malformed.value.code == "bad_confirm"
            with pytest.raises(DeviceError):
                client.confirm("../../keys/device.key", hashlib.sha256(manifest).hexdigest())
            assert device.evidence() == before
            client.confirm("seg-0000000001.seg", hashlib.sha256(manifest).hexdigest())
            assert device.evidence() == {}
        served.join()
    events = device.events()
    refusals = [e for e in events if e.event == "release_refused"]
    assert len(refusals) == 1 and refusals[0].details["segment"] == "seg-0000000001"
    assert [e.event for e in events].count("delete") == 1


def test_fetch_only_what_was_listed(device, keyset):
    device.record(segments=1)
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        with DockClient.connect(cable.b_path, keyset.dock) as client:
            with pytest.raises(DeviceError, match="not in this session's evidence list"):
                client.fetch("seg-0000000001.seg", 0, 10, lambda b: None)   # nothing listed yet
            client.list_evidence()
            for name in ("../identity.json", "audit/../../keys/device.key", "seg-0000000009.seg"):
                with pytest.raises(DeviceError):
                    client.fetch(name, 0, 10, lambda b: None)
            with pytest.raises(DeviceError, match="offset"):
                client.fetch("seg-0000000001.seg", -5, 10, lambda b: None)
            got = bytearray()
            assert client.fetch("seg-0000000001.seg", 100, 50, got.extend) == 50
            assert bytes(got) == device.evidence()["seg-0000000001.seg"][100:150]
        served.join()


def test_time_sync_is_audit_logged_and_kept(device, keyset):
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        with DockClient.connect(cable.b_path, keyset.dock) as client:
            reply = client.sync_time(utc=device.clock.base() + 3600.0)
            assert 3_599_000_000 < reply["offset_us"] < 3_601_000_000
            with pytest.raises(DeviceError, match="plausible UTC"):
                client.sync_time(utc=12.0)
            status = client.status()
        served.join()
    assert status["clock"]["offset_us"] == reply["offset_us"]
    assert abs(status["clock"]["utc"] - (device.clock.base() + 3600)) < 60
    syncs = [e for e in device.events() if e.event == "clock_sync"]
    assert len(syncs) == 1 and syncs[0].details["offset_us"] == reply["offset_us"]
    assert syncs[0].details["old_offset_us"] == 0
    assert json.loads((device.root.state / "clock.json").read_text())["offset_us"] == reply["offset_us"]
    # the next segment carries the new offset in its signed manifest
    device.record(segments=1)
    from secure_store.verify import read_manifest
    manifest = read_manifest(device.store.evidence_path("seg-0000000001.manifest"))
    assert abs(manifest.first_utc_us / 1e6 - (device.clock.base() + 3600)) < 60
    assert manifest.clock_source == f"dock:{keys.fingerprint(keyset.dock.public_key())[:16]}"


def test_added_command_and_unknown_command(device, keyset):
    with LinkedPtys() as cable:
        server = device.server(cable.a_path)
        server.add_command("echo", lambda request: {"args": request.args["x"], "size": len(request.blob)})
        served = device.serve_with(server)
        with DockClient.connect(cable.b_path, keyset.dock) as client:
            assert client.call("echo", blob=b"\x00" * 70_000, x=[1, 2]) == {"args": [1, 2], "size": 70_000}
            with pytest.raises(DeviceError) as unknown:
                client.call("format_disk")
            assert unknown.value.code == "unknown"
        served.join()


def test_device_whose_key_changed_is_refused(device, keyset, tmp_path):
    out = tmp_path / "archive"
    (out / DEVICE_ID).mkdir(parents=True)
    from secure_store.trust import identity_json
    (out / DEVICE_ID / "identity.json").write_bytes(identity_json(DEVICE_ID, keys.generate("device").public_key()))
    device.record(segments=1)
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path)
        with pytest.raises(PullError, match="different key"):
            pull(cable.b_path, out, keyset.dock)
        served.join()
    assert len(device.evidence()) == 2


def test_dock_that_goes_silent_is_timed_out_and_nothing_released(device, keyset):
    device.record(segments=1)
    before = device.evidence()
    with LinkedPtys() as cable:
        served = device.serve(cable.a_path, idle_timeout=1.0)
        client = DockClient.connect(cable.b_path, keyset.dock)
        client.list_evidence()
        client.link._stop.set()          # the dock hangs: no CLOSE, no ACKs, the cable stays in
        served.join(timeout=10)
        client.close()
    assert served.error is None and "silent" in served.result.ended
    assert device.evidence() == before
    assert [e.details.get("ended") for e in device.events() if e.event == "offload_end"] == [served.result.ended]
