"""``bodycam``: the one command line for officers' devices, docks, technicians and courts.

Each package contributes its sub-commands through a module with
``register(subparsers)``; handlers return an exit code. Errors listed in the
module's ``ERRORS`` tuple print one line and exit 1 (or the error's
``exit_code``): 0 ok, 1 failed or integrity problem, 2 bad usage.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from firmware import __version__

# Sub-command modules; import cost matters, so each keeps heavy imports inside handlers.
COMMAND_MODULES = (
    "secure_store.cli",   # keys, verify
    "export.cli",    # export, export-check
    "dock.cli",           # dock pull / watch
    "dock.store_cli",     # store status / hold / ingest
    "firmware.device_cli",  # device, demo
    "firmware.update.cli",  # provision, firmware build / inspect / install / flash
)


def build_parser() -> tuple[argparse.ArgumentParser, tuple[type[BaseException], ...]]:
    parser = argparse.ArgumentParser(
        prog="bodycam",
        description="Body-worn camera firmware, sealed evidence store, dock offload and verification.",
    )
    parser.add_argument("--version", action="version", version=f"bodycam {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    errors: list[type[BaseException]] = []
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # not built yet
        module.register(sub)
        errors.extend(getattr(module, "ERRORS", ()))
    return parser, tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    parser, errors = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except errors as exc:  # type: ignore[misc]
        print(f"bodycam: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 1))
    except KeyboardInterrupt:
        print("bodycam: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
