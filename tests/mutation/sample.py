"""Draw a seeded random sample of the mutants ``make mutate`` would run (``make mutate-sample``).

A whole run of the security-critical modules is ~3,500 mutants, about ten hours on two cores;
a uniform sample of N per module estimates each module's score (at N = 110, within about
±8 points, 95 %) in under an hour, and the same seed gives the same sample on every machine.
Reads the mutant names mutmut generated (``mutants/**/*.py.meta``, written at the start of any
``mutmut run``); prints one name per line. Not collected by pytest; run by the Makefile.
"""

from __future__ import annotations

import collections
import random
import sys

from report import results   # run as a script: this directory is on sys.path


def sample(patterns: list[str], per_module: int, seed: int) -> list[str]:
    by_module: dict[str, list[str]] = collections.defaultdict(list)
    for module, name, _ in results(patterns):
        by_module[module].append(name)
    rng = random.Random(seed)
    chosen: list[str] = []
    for module in sorted(by_module):
        names = sorted(by_module[module])
        chosen += rng.sample(names, min(per_module, len(names)))
    return chosen


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: sample.py PER_MODULE SEED PATTERN...", file=sys.stderr)
        return 2
    for name in sample(argv[2:], int(argv[0]), int(argv[1])):
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
