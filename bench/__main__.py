"""Run benchmarks and splice their sections into BENCHMARKS.md."""

from __future__ import annotations

import datetime as dt
import importlib
import platform
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "BENCHMARKS.md"
HEADER = """# Benchmarks

Measured by `make bench` (`python -m bench`); one benchmark alone: `python -m bench NAME`.
Each section says the machine and date it was measured on. Tests never assert times;
these figures are the record.
"""


def available() -> list[str]:
    return sorted(p.stem[len("bench_"):] for p in (ROOT / "bench").glob("bench_*.py"))


def splice(text: str, name: str, body: str) -> str:
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    return text.rstrip() + "\n\n" + block + "\n"


def main(argv: list[str]) -> int:
    names = argv or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        print(f"bench: unknown benchmark(s) {', '.join(unknown)}; have {', '.join(available())}", file=sys.stderr)
        return 2
    text = OUT.read_text() if OUT.exists() else HEADER
    machine = f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}"
    for name in names:
        print(f"bench: running {name} ...", flush=True)
        body = importlib.import_module(f"bench.bench_{name}").run()
        stamp = f"_Measured {dt.date.today().isoformat()} on {machine} by `python -m bench {name}`._\n\n"
        text = splice(text, name, stamp + body)
        OUT.write_text(text)  # after each, so a later failure keeps earlier figures
        print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
