"""Summarise a ``mutmut run`` (``make mutate``): score per module and every surviving mutant.

Reads mutmut's own result files (``mutants/**/*.py.meta``), keeps the mutants whose names
match the patterns given (the same ones ``make mutate`` ran), prints a score table and
each survivor with its diff (``mutmut show``). Killed = killed by a test, a timeout or the
type check; a mutant no selected test reaches ("no tests") counts as surviving.
Not collected by pytest; run by the Makefile from the repository root.
"""

from __future__ import annotations

import collections
import fnmatch
import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

KILLED = {1, 3, 36, 37, -24, 24, 152, 255}       # mutmut's exit codes for killed / timeout / type check
SURVIVED = {0, 5, 33}                              # survived, or no test reached it


def results(patterns: list[str]) -> Iterator[tuple[str, str, int | None]]:
    """(module, mutant name, mutmut's exit code or None if not run yet) of each mutant matching
    ``patterns``, from mutmut's result files; also what ``sample.py`` draws from."""
    for meta in sorted(Path("mutants").rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        for name, code in sorted(codes.items()):
            if any(fnmatch.fnmatchcase(name, p) for p in patterns):
                yield name.split(".x")[0], name, code


def main(patterns: list[str]) -> int:
    rows: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    survivors: list[str] = []
    for module, name, code in results(patterns):
        state = "killed" if code in KILLED else "survived" if code in SURVIVED else \
            "not run" if code is None else "other"
        rows[module][state] += 1
        if state == "survived":
            survivors.append(name)
    total = collections.Counter()
    print(f"{'module':34} {'mutants':>8} {'killed':>7} {'survived':>9} {'not run':>8} {'score':>7}")
    for module, c in sorted(rows.items()):
        total.update(c)
        run = c["killed"] + c["survived"]
        score = f"{100 * c['killed'] / run:.1f}%" if run else "-"
        print(f"{module:34} {sum(c.values()):8d} {c['killed']:7d} {c['survived']:9d} {c['not run']:8d} {score:>7}")
    run = total["killed"] + total["survived"]
    print(f"{'all':34} {sum(total.values()):8d} {total['killed']:7d} {total['survived']:9d} "
          f"{total['not run']:8d} {(100 * total['killed'] / run if run else 0):6.1f}%")
    print(f"\n{len(survivors)} surviving mutants:\n")
    for name in survivors:
        shown = subprocess.run([str(Path(sys.executable).with_name("mutmut")), "show", name],
                               capture_output=True, text=True)
        print(shown.stdout.strip() or name, end="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["*"]))
