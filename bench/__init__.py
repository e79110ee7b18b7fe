"""Benchmarks: ``make bench`` (``python -m bench [NAME ...]``) refreshes BENCHMARKS.md.

Each ``bench/bench_NAME.py`` has ``run() -> str`` returning a Markdown section
(table rows and notes). Its section in BENCHMARKS.md lies between
``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` and is replaced alone, so
one benchmark can be re-run without losing the others' figures.
"""
