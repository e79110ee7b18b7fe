"""Firmware images: build, verify, and every kind of bad image refused with its own reason."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.update import image as fwimage
from firmware.cli import main
from firmware.update.image import ImageError
from secure_store import keys


@pytest.fixture()
def vendor(tmp_path):
    key_path, pub_path = keys.write_keypair("vendor", tmp_path / "vendor")
    return keys.load_private_key(key_path, "vendor"), key_path, pub_path


@pytest.fixture()
def source(tmp_path):
    src = tmp_path / "src"
    (src / "lib" / "deep").mkdir(parents=True)
    (src / "app.py").write_bytes(b"print('v1')\n")
    (src / "lib" / "deep" / "data.bin").write_bytes(os.urandom(200_000))
    (src / "lib" / "run.sh").write_bytes(b"#!/bin/sh\nexit 0\n")
    (src / "lib" / "run.sh").chmod(0o755)
    (src / "empty").write_bytes(b"")
    return src


def craft(path, key, entries, payloads, *, sign=True, version="2.0.0"):
    """A hostile-but-signed image: any manifest entries, any payload bytes."""
    raw = fwimage.canonical_json({"image_format": 1, "version": version, "min_version": "0.0.0",
                                  "built_utc": "2026-01-01T00:00:00Z", "files": entries})
    with open(path, "wb") as out:
        fwimage.pack(raw, fwimage.sign_manifest(raw, key) if sign else b"", payloads, out)
    return path


def entry(path, data, mode=0o644, kind="file"):
    return {"path": path, "type": kind, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "mode": mode}


def test_build_then_verify_lists_every_file_with_hash_and_mode(tmp_path, vendor, source):
    key, _, pub = vendor
    out = tmp_path / "fw.img"
    built = fwimage.build_image(source, "1.2.3", key, out, min_version="1.0.0")
    manifest = fwimage.verify_image(out, keys.load_public_key(pub, "vendor"))
    assert manifest == built
    assert manifest.version == "1.2.3" and manifest.min_version == "1.0.0"
    by_path = {f.path: f for f in manifest.files}
    assert sorted(by_path) == ["app.py", "empty", "lib/deep/data.bin", "lib/run.sh"]
    for rel, f in by_path.items():
        data = (source / rel).read_bytes()
        assert f.size == len(data) and f.sha256 == hashlib.sha256(data).hexdigest()
    assert by_path["lib/run.sh"].mode == 0o755 and by_path["app.py"].mode == 0o644
    blob = out.read_bytes()
    assert blob[:8] == fwimage.MAGIC and struct.unpack(">H", blob[8:10])[0] == 1
    assert blob.endswith((source / "lib/run.sh").read_bytes())  # payload in manifest order, nothing after


def test_build_refuses_symlink_and_hidden_files(tmp_path, vendor, source):
    key, _, _ = vendor
    (source / "link").symlink_to("/etc/passwd")
    with pytest.raises(ImageError, match="symlink 'link'"):
        fwimage.build_image(source, "1.0.0", key, tmp_path / "x.img")
    (source / "link").unlink()
    (source / "lib" / "dirlink").symlink_to(source)
    with pytest.raises(ImageError, match="symlink 'lib/dirlink'"):
        fwimage.build_image(source, "1.0.0", key, tmp_path / "x.img")
    assert not (tmp_path / "x.img").exists()


def test_version_parsing_is_strict():
    assert fwimage.parse_version("10.0.1") > fwimage.parse_version("9.9.9")
    for bad in ("1.0", "01.0.0", "1.0.0-rc1", " 1.0.0", "1.0.0\n", 1):
        with pytest.raises(ImageError):
            fwimage.parse_version(bad)


def _bad_images(tmp_path, key, other_key, good: bytes):
    """(name, bytes, expected reason) for each kind of bad image."""
    hdr = fwimage.HEADER.size
    mlen = struct.unpack(">I", good[10:14])[0]
    data = b"hello firmware\n"
    cases = {}

    def crafted(name, entries, payloads, **kw):
        craft(tmp_path / name, kw.pop("k", key), entries, payloads, **kw)
        return (tmp_path / name).read_bytes()

    cases["unsigned"] = (crafted("u", [entry("a", data)], [data], sign=False), "unsigned")
    cases["wrong key"] = (crafted("w", [entry("a", data)], [data], k=other_key), r"wrong key")
    tampered = bytearray(good)
    tampered[-3] ^= 0x01
    cases["tampered file"] = (bytes(tampered), "tampered file")
    manifest = good[hdr:hdr + mlen]
    assert b'"version":"1.0.0"' in manifest
    cases["tampered manifest"] = (good.replace(b'"version":"1.0.0"', b'"version":"9.0.0"', 1), "manifest tampered")
    cases["truncated header"] = (good[:12], "truncated")
    cases["truncated manifest"] = (good[:hdr + mlen // 2], "truncated in the manifest")
    cases["truncated signature"] = (good[:hdr + mlen + 40], "truncated in the signature")
    cases["truncated payload"] = (good[:-1], "truncated in file")
    cases["trailing data"] = (good + b"x", "trailing data")
    cases["bad magic"] = (b"PK\x03\x04" + good[4:], "bad magic")
    cases["future format"] = (good[:8] + b"\x00\x03" + good[10:], "format version 3 unsupported")  # 2 is hybrid
    cases["path traversal"] = (crafted("t", [entry("lib/../../evil", data)], [data]), "path traversal")
    cases["absolute path"] = (crafted("a", [entry("/etc/cron.d/evil", data)], [data]), "absolute path")
    cases["symlink entry"] = (crafted("s", [entry("lib", b"/etc", kind="symlink")], [b"/etc"]), "symlink")
    cases["hardlink entry"] = (crafted("h", [entry("x", b"", kind="hardlink")], []), "hardlink")
    cases["oversized file"] = (
        crafted("o", [dict(entry("big", b""), size=fwimage.MAX_FILE_BYTES + 1)], []), "oversized")
    many = [dict(entry(f"f{i}", b""), size=fwimage.MAX_FILE_BYTES) for i in range(5)]
    cases["oversized total"] = (crafted("ot", many, []), "oversized")
    cases["oversized manifest"] = (good[:10] + struct.pack(">I", fwimage.MAX_MANIFEST_BYTES + 1) + good[14:], "oversized")
    cases["duplicate path"] = (crafted("d", [entry("a", data), entry("a", data)], [data, data]), "duplicate path")
    cases["file through file"] = (crafted("ff", [entry("a", data), entry("a/b", data)], [data, data]), "runs through file")
    crowd = sorted((entry(f"f{i:05d}", b"") for i in range(fwimage.MAX_FILES + 1)), key=lambda e: e["path"])
    cases["too many files"] = (crafted("many", crowd, []), f"at most {fwimage.MAX_FILES} entries")
    cases["unsorted"] = (crafted("us", [entry("b", data), entry("a", data)], [data, data]), "not in path order")
    cases["setuid mode"] = (crafted("m", [entry("a", data, mode=0o4755)], [data]), "mode")
    return cases


BAD_NAMES = ["unsigned", "wrong key", "tampered file", "tampered manifest", "truncated header", "truncated manifest",
             "truncated signature", "truncated payload", "trailing data", "bad magic", "future format",
             "path traversal", "absolute path", "symlink entry", "hardlink entry", "oversized file",
             "oversized total", "oversized manifest", "too many files", "duplicate path", "file through file", "unsorted",
             "setuid mode"]


@pytest.fixture()
def good_image(tmp_path, vendor):
    key, _, pub = vendor
    src = tmp_path / "good"
    src.mkdir()
    (src / "app.py").write_bytes(b"print('good')\n" * 10)
    out = tmp_path / "good.img"
    fwimage.build_image(src, "1.0.0", key, out)
    return out.read_bytes()


@pytest.mark.parametrize("name", BAD_NAMES)
def test_each_bad_image_is_refused_with_its_own_reason(tmp_path, vendor, good_image, name):
    key, _, pub = vendor
    blob, reason = _bad_images(tmp_path, key, keys.generate("vendor"), good_image)[name]
    path = tmp_path / "bad.img"
    path.write_bytes(blob)
    with pytest.raises(ImageError, match=reason):
        fwimage.verify_image(path, keys.load_public_key(pub, "vendor"))


def test_every_bad_case_has_a_distinct_reason(tmp_path, vendor, good_image):
    key, _, pub = vendor
    messages = {}
    for name, (blob, _) in _bad_images(tmp_path, key, keys.generate("vendor"), good_image).items():
        (tmp_path / "bad.img").write_bytes(blob)
        with pytest.raises(ImageError) as info:
            fwimage.verify_image(tmp_path / "bad.img", keys.load_public_key(pub, "vendor"))
        messages[name] = str(info.value)
    assert len(messages) == len(BAD_NAMES)
    assert messages["unsigned"] != messages["wrong key"] != messages["tampered manifest"] != messages["tampered file"]


@settings(max_examples=25)
@given(st.data())
def test_any_single_byte_change_is_refused(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("flip")
    key = keys.generate("vendor")
    src = tmp / "src"
    src.mkdir()
    (src / "a").write_bytes(b"A" * 300)
    (src / "b").write_bytes(b"B" * 100)
    fwimage.build_image(src, "1.0.0", key, tmp / "fw.img")
    blob = bytearray((tmp / "fw.img").read_bytes())
    pos = data.draw(st.integers(0, len(blob) - 1), label="pos")
    blob[pos] ^= data.draw(st.integers(1, 255), label="xor")
    with pytest.raises(ImageError):
        with io.BytesIO(bytes(blob)) as stream:
            manifest = fwimage.read_manifest(stream, key.public_key())
            for _ in fwimage.iter_files(stream, manifest):
                pass


def test_streaming_reader_yields_verified_bytes(tmp_path, vendor, source):
    key, _, pub = vendor
    fwimage.build_image(source, "1.0.0", key, tmp_path / "fw.img")
    with open(tmp_path / "fw.img", "rb") as stream:
        manifest = fwimage.read_manifest(stream, keys.load_public_key(pub, "vendor"))
        got = {e.path: b"".join(chunks()) for e, chunks in fwimage.iter_files(stream, manifest)}
    assert got == {p: (source / p).read_bytes() for p in got}


def test_cli_inspect_exit_codes_and_reasons(tmp_path, vendor, source, capsys):
    key, key_path, pub = vendor
    assert main(["firmware", "build", "--version", "1.4.0", "--key", str(key_path),
                 "--out", str(tmp_path / "fw.img"), str(source)]) == 0
    assert main(["firmware", "inspect", str(tmp_path / "fw.img"), "--vendor-pub", str(pub)]) == 0
    out = capsys.readouterr().out
    assert "firmware 1.4.0" in out and "lib/deep/data.bin" in out and "0755" in out
    blob = bytearray((tmp_path / "fw.img").read_bytes())
    blob[-1] ^= 0xFF
    (tmp_path / "bad.img").write_bytes(blob)
    assert main(["firmware", "inspect", str(tmp_path / "bad.img"), "--vendor-pub", str(pub)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tampered file" in err[0] and "lib/run.sh" in err[0]
    _, other_pub = keys.write_keypair("vendor", tmp_path / "other")
    assert main(["firmware", "inspect", str(tmp_path / "fw.img"), "--vendor-pub", str(other_pub)]) == 1
    assert "wrong key" in capsys.readouterr().err
    agency_key, agency_pub = keys.write_keypair("agency", tmp_path / "agency")
    assert main(["firmware", "inspect", str(tmp_path / "fw.img"), "--vendor-pub", str(agency_pub)]) == 1
    assert "not a vendor public key" in capsys.readouterr().err


def test_manifest_json_is_strict(vendor):
    raw = fwimage.canonical_json({"image_format": 1, "version": "1.0.0", "min_version": "0.0.0",
                                  "built_utc": "x", "files": []})
    assert fwimage.parse_manifest(raw).files == ()
    with pytest.raises(ImageError, match="duplicate keys"):
        fwimage.parse_manifest(raw[:-1] + b',"files":[]}')
    with pytest.raises(ImageError, match="fields"):
        fwimage.parse_manifest(json.dumps({"version": "1.0.0"}).encode())
    with pytest.raises(ImageError, match="ASCII JSON"):
        fwimage.parse_manifest(b"\xff\xfe")


@settings(max_examples=40)
@given(st.binary(max_size=300), st.booleans())
def test_garbage_only_ever_raises_image_error(data, with_magic):
    key = keys.generate("vendor").public_key()
    blob = (fwimage.MAGIC + b"\x00\x01" + data) if with_magic else data
    with pytest.raises(ImageError):
        with io.BytesIO(blob) as stream:
            manifest = fwimage.read_manifest(stream, key)
            for _ in fwimage.iter_files(stream, manifest):
                pass
