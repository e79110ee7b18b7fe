"""The export report a person reads: one self-contained HTML file per exported MP4.

Everything is inline (CSS, thumbnails as ``data:`` URIs) and nothing is fetched, so the file
opens the same on an air-gapped court laptop years from now; the Content-Security-Policy
forbids the browser to load anything from anywhere. It is rendered from the JSON report (the
machine-readable twin written beside it), so the two never disagree.
"""

from __future__ import annotations

from html import escape
from typing import Any, Iterable

from export.thumbnails import Thumbnail

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"  # nothing fetched, no script
CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1000px;padding:24px;
  color:#1b1b1b}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ccc;padding-bottom:4px}
.verdict{padding:14px 18px;border-radius:6px;font-size:17px;margin:16px 0}
.ok{background:#e3f4e3;border:2px solid #2e7d32}
.warn{background:#fff4d6;border:2px solid #b7791f}
.bad{background:#fde2e1;border:2px solid #c62828}
.badge{display:inline-block;padding:2px 8px;border-radius:4px;background:#b7791f;color:#fff;font-weight:600;
  margin-left:8px}
table{border-collapse:collapse;width:100%;margin:6px 0}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}
code,.hash{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px;word-break:break-all}
.timeline{position:relative;height:46px;background:#eee;border-radius:4px;margin:10px 0 28px}
.tl{position:absolute;top:0;height:46px;box-sizing:border-box}
.seg{background:#5c8fd6;border-right:1px solid #fff}
.seg.recovered{background:#8e6bbf}
.pre{background:#9cc3a0;opacity:.85;height:12px;top:34px}
.gap{background:repeating-linear-gradient(45deg,#c62828 0 6px,#f3b1b0 6px 12px)}
.marker{width:3px;background:#111;top:-6px;height:58px}
.marker span{position:absolute;top:60px;left:-4px;font-size:11px;white-space:nowrap}
.thumbs{display:flex;flex-wrap:wrap;gap:12px}
.thumbs figure{margin:0;width:320px}
.thumbs img{width:320px;display:block;border:1px solid #999}
figcaption{font-size:13px}
pre{background:#f6f6f6;padding:10px;overflow-x:auto}
"""


def render(report: dict[str, Any], thumbs: Iterable[Thumbnail], outputs: list[dict[str, Any]]) -> str:
    """The HTML page for one export's ``report`` (the JSON report), its stills and its output hashes."""
    title = f"Evidence export — {report['device_id']}, recording {report['recording_id']}"
    partial = report["export"]["partial"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">",
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}{'<span class=badge id=partial-badge>PARTIAL</span>' if partial else ''}"
        f"{'<span class=badge>BEST EFFORT</span>' if report['export']['best_effort'] else ''}</h1>",
        f"<div>Exported {escape(report['exported_utc'])} · MP4 <code>{escape(report['mp4']['file'])}</code></div>",
        _verdict(report),
        _facts(report),
        _section("Timeline", _timeline(report)),
        _section("Stills", _thumbs(thumbs)),
        _section("Markers", _table(["Time (UTC)", "Into video", "Label"],
                                   [[m["utc"], f"{m['offset_s']:.3f} s", m["label"]] for m in report["markers"]],
                                   "No markers were set.")),
        _section("Missing, skipped and damaged footage", _missing(report)),
        _section("Segments", _segments(report)),
        _section("Device and trust", _trust(report)),
        _section("Hashes", _hashes(report, outputs)),
        _section("Verify it yourself", _commands(report)),
        "</body></html>\n",
    ]
    return "".join(parts)


def _section(title: str, body: str) -> str:
    return f"<h2>{escape(title)}</h2>{body}"


def _verdict(report: dict[str, Any]) -> str:
    v, c2pa, device = report["verification"], report["c2pa"], report["device_id"]
    lines = []
    if v["ok"] and not report["export"]["partial"]:
        cls = "ok"
        lines.append(f"<b>Verified.</b> Every segment of this recording is signed by camera {escape(device)}, "
                     "complete, in order and unaltered; the video was decrypted and copied into the MP4 without "
                     "re-encoding.")
    elif v["ok"]:
        cls = "warn"
        lines.append(f"<b>Verified, but partial.</b> What this MP4 holds is signed by camera {escape(device)} and "
                     "unaltered, but parts of the recording are not in it (listed below).")
    else:
        cls = "bad"
        lines.append(f"<b>Damaged evidence, exported on a best-effort basis.</b> {len(v['problems'])} verification "
                     "problem(s) were found; only segments that verified are in this MP4, and every gap is listed "
                     "below. Do not treat it as the complete recording.")
    others = v.get("other_problems") or []
    if others:
        lines.append(f"Other evidence beside it did not verify ({len(others)} problem(s), listed below); it does not "
                     "concern this recording, and was not exported with it.")
    trust = list((v.get("device_trust") or {}).values())
    if trust and all(t.get("anchored") for t in trust):
        lines.append("The camera's key is certified by the agency root the verifier was given.")
    elif trust:
        lines.append("<b>The camera's key is not anchored to an agency root</b>: "
                     + escape("; ".join(t.get("source", "") for t in trust if not t.get("anchored"))) + ".")
    if c2pa["signed"]:
        root = c2pa.get("trust_root")
        trusted = root and c2pa.get("check") == "Trusted"
        anchor = (f"chained to the agency root <b>{escape(root['subject'])}</b>" if trusted
                  else "not checked against an agency root here")
        lines.append(f"The MP4 carries Content Credentials (C2PA) signed by <b>{escape(c2pa['signer'])}</b>, {anchor}.")
    else:
        lines.append("<b>The MP4 is not signed</b>: no export certificate was given, so it carries no Content "
                     "Credentials. Its SHA-256 below is the only binding between this report and the file.")
    return f"<div class='verdict {cls}' id='verdict'>{'<br>'.join(lines)}</div>"


def _facts(report: dict[str, Any]) -> str:
    rec, pre = report.get("recording", {}), report.get("pre_event")
    rows = [
        ["Camera", report["device_id"]],
        ["Recording", report["recording_id"]],
        ["Started (first frame, UTC)", report["start_utc"]],
        ["Ended (last frame, UTC)", report["end_utc"]],
        ["Length in this MP4", f"{report['mp4']['duration_s']:.1f} s, {report['frame_count']} frames, "
                               f"{report['mp4']['width']}×{report['mp4']['height']}"],
        ["Started by", rec.get("trigger") or "not recorded in an audit log beside the evidence"],
        ["Pre-event footage", f"{pre['seconds']:.1f} s before the press ({pre['from_utc']} to {pre['to_utc']})"
                              if pre else "none recorded, or no audit log to tell"],
        ["Stopped by", rec.get("stop_reason") or "not recorded in an audit log beside the evidence"],
        ["Clock", ", ".join(report["clock"]["sources"]) + " (UTC = sensor time + the signed offset)"],
        ["Audio", "no audio track" if not report.get("audio") else report["audio"]["summary"]],
    ]
    return "<table id='facts'>" + "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>"
                                          for k, v in rows) + "</table>"


def _timeline(report: dict[str, Any]) -> str:
    """Segments, gaps, pre-event span and markers on one bar, positioned by UTC."""
    import datetime as dt

    def t(iso: str) -> float:
        return dt.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()

    spans = [(t(s["first_utc"]), t(s["last_utc"])) for s in report["segments"]]
    spans += [(t(m["from_utc"]), t(m["to_utc"])) for m in report["missing"] if m.get("from_utc") and m.get("to_utc")]
    start, end = min(a for a, _ in spans), max(b for _, b in spans)
    width = max(end - start, 1e-3)

    def box(cls: str, a: float, b: float, tip: str, inner: str = "") -> str:
        left, w = 100 * (a - start) / width, max(100 * (b - a) / width, 0.4)
        return f"<div class='tl {cls}' style='left:{left:.3f}%;width:{w:.3f}%' title='{escape(tip)}'>{inner}</div>"

    items = [box("seg recovered" if s["recovered"] else "seg", t(s["first_utc"]), t(s["last_utc"]),
                 f"{s['file']}: {s['first_utc']} – {s['last_utc']}") for s in report["segments"]]
    items += [box("gap", t(m["from_utc"]), t(m["to_utc"]), f"missing: {m['what']}")
              for m in report["missing"] if m.get("from_utc") and m.get("to_utc")]
    items += [box("gap", t(g["after_utc"]), t(g["after_utc"]) + g["gap_us"] / 1e6, "gap in the frames")
              for g in report["gaps"]]
    if report.get("pre_event"):
        p = report["pre_event"]
        items.append(box("pre", t(p["from_utc"]), t(p["to_utc"]), "pre-event footage"))
    items += [f"<div class='tl marker' style='left:{100 * (t(m['utc']) - start) / width:.3f}%' "
              f"title='{escape(m['label'])}'><span>{escape(m['label'])}</span></div>" for m in report["markers"]]
    legend = ("<div>Blue: sealed segments (purple: closed by power-loss recovery) · green: pre-event footage · "
              "red stripes: missing or gap · black: markers</div>")
    return f"<div class='timeline' id='timeline'>{''.join(items)}</div>{legend}"


def _thumbs(thumbs: Iterable[Thumbnail]) -> str:
    figures = [f"<figure><img class='thumb' alt='{escape(th.label)}' src='{th.data_uri}'>"
               f"<figcaption>{escape(th.label)} — {th.offset_s:.2f} s into the video</figcaption></figure>"
               for th in thumbs]
    if not figures:
        return "<p>No stills could be decoded.</p>"
    return f"<div class='thumbs' id='thumbs'>{''.join(figures)}</div>"


def _missing(report: dict[str, Any]) -> str:
    rows = [[m["what"], m.get("from_utc") or "unknown", m.get("to_utc") or "unknown", m["reason"]]
            for m in report["missing"]]
    rows += [[f"gap in the frames after {g['after_utc']}", g["after_utc"], f"+{g['gap_us'] / 1e6:.3f} s",
              f"no frames for that time in {g['segment']}"] for g in report["gaps"]]
    rows += [[f"{name}", "", "", "segment closed by power-loss recovery: the last second before the cut may be lost"]
             for name in report["recovered_segments"]]
    rows += [[f"muted {m['from_utc']}", m["from_utc"], m["to_utc"], m.get("reason", "muted")]
             for m in report.get("muted_spans", [])]
    v = report["verification"]
    problems = "".join(f"<li>{escape(p)}</li>" for p in v["problems"])
    others = "".join(f"<li>{escape(p)}</li>" for p in v.get("other_problems") or [])
    table = _table(["What", "From (UTC)", "To (UTC)", "Why"], rows,
                   "Nothing is missing: no gaps, no skipped or recovered segments, no muted spans.")
    return (table + (f"<p>Verification problems:</p><ul id='problems'>{problems}</ul>" if problems else "")
            + (f"<p>Problems elsewhere in the evidence (other recordings):</p><ul>{others}</ul>" if others else ""))


def _segments(report: dict[str, Any]) -> str:
    return _table(["File", "Seq", "Index", "From (UTC)", "To (UTC)", "Frames", "Clock", "Notes", "Protection",
                   "Manifest SHA-256"],
                  [[s["file"], s["segment_seq"], s["index"], s["first_utc"], s["last_utc"], s["frames"],
                    s["clock_source"], ", ".join(n for n, on in (("recovered", s["recovered"]),
                                                                 ("storage full", s["storage_full"])) if on),
                    _protection(s), _hash(s["manifest_sha256"])] for s in report["segments"]], "")


_SIGNED = {"ed25519": "signed Ed25519", "ed25519+mldsa65": "signed Ed25519 + ML-DSA-65 (post-quantum)"}
_WRAPPED = {"hpke-x25519": "key wrapped X25519", "hpke-mlkem768-x25519": "key wrapped ML-KEM-768 + X25519 "
                                                                         "(post-quantum)"}


def _protection(s: dict[str, Any]) -> str:
    """How the segment is protected, in words (FORMAT.md, "Post-quantum protection")."""
    return escape("; ".join([_SIGNED.get(s.get("signatures"), "?"), _WRAPPED.get(s.get("key_wrap"), "?")]))


def _trust(report: dict[str, Any]) -> str:
    c2pa, root = report["c2pa"], report["c2pa"].get("trust_root")
    rows = [["Device key SHA-256", _hash(report["device_key_sha256"])],
            ["Device certificate", _device_cert(report.get("device_certificate"))],
            ["Device key rests on", escape("; ".join(t.get("source", "") for t in
                                                   (report["verification"].get("device_trust") or {}).values())
                                          or "the device public key given or found beside the evidence")],
            ["Export signer", escape(c2pa["signer"]) if c2pa["signed"] else "unsigned export"],
            ["Trust root", (f"{escape(root['subject'])}<br>SHA-256 {_hash(root['sha256'])}" if root
                            else "none given: the signature was not checked against an agency root")],
            ["C2PA check at export", escape(c2pa.get("check") or "not signed")]]
    return "<table id='trust'>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _device_cert(cert: dict[str, Any] | None) -> str:
    if not cert:
        return "none beside the evidence: the device is identified by its public key"
    return (f"{escape(cert['subject'])}, issued by {escape(cert['issuer'])} ({escape(cert['file'])})<br>"
            f"SHA-256 {_hash(cert['sha256'])}")


def _hashes(report: dict[str, Any], outputs: list[dict[str, Any]]) -> str:
    rows = [["input", i["file"], i["size"], _hash(i["sha256"])] for i in report["inputs"]]
    rows += [["output", o["file"], o["size"], _hash(o["sha256"])] for o in outputs]
    return _table(["", "File", "Bytes", "SHA-256"], rows, "")


def _commands(report: dict[str, Any]) -> str:
    return ("<p>Anyone can check this export from the agency's root certificate and the sealed evidence, "
            "without trusting this report:</p><pre id='commands'>"
            + escape("\n".join(report["verify_commands"])) + "</pre>")


class Markup(str):
    """HTML made here (not text from the evidence): goes into a table cell unescaped."""


def _hash(hexdigest: str) -> Markup:
    return Markup(f"<span class='hash'>{escape(hexdigest)}</span>")


def _table(head: list[str], rows: list[list[Any]], empty: str) -> str:
    if not rows:
        return f"<p>{escape(empty)}</p>"
    cells = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, Markup) else escape(str(c))}</td>" for c in r)
                    + "</tr>" for r in rows)
    return "<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>" + cells + "</table>"
