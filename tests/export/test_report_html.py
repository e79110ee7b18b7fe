"""The HTML report as a person sees it: rendered by headless Chromium, checked on screen and in the DOM."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from export.exporter import export_evidence
from export.provenance import ExportSigner

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--force-device-scale-factor=1", "--window-size=1100,2600"]


@pytest.fixture(scope="module")
def browser() -> str:
    found = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if found is None:
        pytest.skip("no Chromium installed (`make test` installs Debian's chromium when run as root)")
    return found


def chromium(browser: str, html: Path, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, html.as_uri()],
                              capture_output=True, timeout=300, check=True)


@pytest.fixture(scope="module")
def exported(recorded, pki, tmp_path_factory):
    device, pulled, _ = recorded
    out = tmp_path_factory.mktemp("html")
    rec, _ = export_evidence(pulled, device.agency_key, out, signer=ExportSigner.from_files(pki.chain, pki.key),
                             trust_root=pki.root_pem.read_bytes()).recordings
    return rec


def test_report_is_self_contained(exported) -> None:
    html = exported.html.read_text()
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:|//)""", html)  # nothing fetched from anywhere
    assert "url(" not in html and "<script" not in html and "<link" not in html
    assert "default-src 'none'" in html  # and the browser is told to fetch nothing


def test_chromium_shows_the_verdict_and_the_stills(exported, browser: str, tmp_path: Path) -> None:
    dom = chromium(browser, exported.html, "--dump-dom").stdout.decode()
    verdict = re.search(r"<div class=\"verdict ok\" id=\"verdict\">(.*?)</div>", dom, re.S)
    assert verdict, "no green verdict box in the rendered page"
    text = re.sub(r"<[^>]+>", "", verdict.group(1))
    assert text.startswith("Verified. Every segment of this recording is signed by camera CAM-0042")
    assert "chained to the agency root" in text and "Test Agency Root" in text
    assert 'id="partial-badge"' not in dom
    for label in ("door opened", "arrest"):
        assert label in dom

    shot_path = tmp_path / "report.png"
    chromium(browser, exported.html, f"--screenshot={shot_path}")
    shot = cv2.imread(str(shot_path))
    assert shot is not None and shot.shape[1] == 1100
    # The verdict box is on screen in its green.
    green = np.all(np.abs(shot[:500].astype(int) - (227, 244, 227)) <= 2, axis=2)  # #e3f4e3 (BGR = RGB here)
    assert green.sum() > 20_000
    # Every still (start, each marker, end) was decoded and painted: find each one in the screenshot.
    stills = re.findall(r"src=['\"]data:image/jpeg;base64,([A-Za-z0-9+/=]+)", exported.html.read_text())
    assert len(stills) == 4
    for data in stills:
        still = cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)
        score = cv2.matchTemplate(shot, still, cv2.TM_CCOEFF_NORMED).max()
        assert score > 0.9, f"a thumbnail is not visible in the rendered report (best match {score:.2f})"


def test_report_lists_hashes_markers_and_how_to_verify(exported) -> None:
    import hashlib
    import json

    html = exported.html.read_text()
    report = json.loads(exported.report.read_text())
    assert hashlib.sha256(exported.mp4.read_bytes()).hexdigest() in html
    assert hashlib.sha256(exported.report.read_bytes()).hexdigest() in html
    for item in report["inputs"]:
        assert item["sha256"] in html
    assert "bodycam verify" in html and "bodycam export-check" in html
    assert report["pre_event"]["seconds"] == 1.0 and report["recording"]["trigger"] == "button"
    assert "1.0 s before the press" in html


def test_chromium_shows_a_best_effort_export_as_damaged_and_partial(recorded, browser: str, tmp_path: Path) -> None:
    device, pulled, _ = recorded
    bad = tmp_path / "bad"
    shutil.copytree(pulled, bad)
    segment = sorted(bad.glob("seg-*.seg"))[2]
    data = bytearray(segment.read_bytes())
    data[-200] ^= 0x01
    segment.write_bytes(bytes(data))
    rec = export_evidence(bad, device.agency_key, tmp_path / "out", best_effort=True).recordings[0]
    dom = chromium(browser, rec.html, "--dump-dom").stdout.decode()
    verdict = re.search(r"<div class=\"verdict bad\" id=\"verdict\">(.*?)</div>", dom, re.S)
    assert verdict and "Damaged evidence, exported on a best-effort basis" in verdict.group(1)
    assert "The MP4 is not signed" in verdict.group(1)
    assert 'id="partial-badge">PARTIAL<' in dom and ">BEST EFFORT<" in dom
    assert f"{segment.name} chunk 0" in dom and "does not match the signed manifest" in dom


def test_the_verdict_says_what_the_camera_key_rests_on(exported) -> None:
    """When the verifier reports per-device trust, the verdict says whether the key is anchored."""
    import json

    from export import report_html

    report = json.loads(exported.report.read_text())
    report["verification"]["device_trust"] = {"dock/CAM-0042": {"anchored": False, "source": "device key taken "
                                                                "from identity.json beside the evidence"}}
    assert "is not anchored to an agency root</b>: device key taken from identity.json" in report_html.render(
        report, [], [])
    report["verification"]["device_trust"]["dock/CAM-0042"]["anchored"] = True
    assert "certified by the agency root" in report_html.render(report, [], [])
