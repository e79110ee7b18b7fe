"""``bodycam``: the one command line for officers' devices, docks, technicians and courts.

Each package contributes its sub-commands through a module with
``register(subparsers)``; handlers return an exit code. Every command ends the
same way, through :func:`main`:

====  ==================================================================
0     done; everything checked verifies
1     failed: an integrity problem, a refused or impossible operation, an
      unreadable or unwritable file (one line naming the path and the reason)
2     bad usage: an unknown option, a missing argument, a bad setting
130   interrupted (Ctrl-C)
====  ==================================================================

Errors listed in a module's ``ERRORS`` tuple and any ``OSError`` print one line
(``bodycam: ...``), never a traceback. ``-v`` and ``-q/--quiet`` are accepted
before or after the sub-command. A reader that goes away (``| head``) ends the
command quietly.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Sequence

from firmware import __version__

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# Sub-command modules; import cost matters, so each keeps heavy imports inside handlers.
COMMAND_MODULES = (
    "secure_store.cli",   # keys, verify
    "export.cli",    # export, export-check
    "dock.cli",           # dock pull / watch
    "dock.store_cli",     # store status / hold / ingest
    "firmware.device_cli",  # device, demo, config
    "firmware.update.cli",  # provision, firmware build / inspect / install / flash
)


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """-v and -q on ``parser``; below the top they default to "not given" so they never reset it."""
    default = {} if top else {"default": argparse.SUPPRESS}
    taken = parser._option_string_actions
    verbose = [o for o in ("-v", "--verbose") if o not in taken]
    if verbose:
        parser.add_argument(*verbose, dest="verbose", action="count",
                            help="more log output (repeat for debug)", **({"default": 0} if top else default))
    quiet = [o for o in ("-q", "--quiet") if o not in taken]
    if quiet:
        parser.add_argument(*quiet, dest="quiet", action="store_true",
                            help="only errors: no progress bars, no informational log lines", **default)


def _sub_parsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                yield child
                yield from _sub_parsers(child)


def build_parser() -> tuple[argparse.ArgumentParser, tuple[type[BaseException], ...]]:
    parser = argparse.ArgumentParser(
        prog="bodycam",
        description="Body-worn camera firmware, sealed evidence store, dock offload and verification.",
        epilog="exit status: 0 ok, 1 failed or integrity problem, 2 bad usage, 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"bodycam {__version__}")
    _add_global_options(parser, top=True)
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
    for child in _sub_parsers(parser):
        _add_global_options(child, top=False)
    return parser, tuple(errors)


def describe_os_error(exc: OSError) -> str:
    """One line naming the path(s) and the reason: ``/proc/x: Permission denied``."""
    reason = exc.strerror or str(exc)
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


def _quiet_stdout() -> None:
    """The reader went away: point stdout at /dev/null so the exit flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    parser, errors = build_parser()
    args = parser.parse_args(argv)
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(
        level=logging.ERROR if quiet else logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if quiet and hasattr(args, "no_progress"):
        args.no_progress = True  # one --quiet everywhere; --no-progress stays for old scripts
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe is seen here, not at exit
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_FAILED
    except errors as exc:  # type: ignore[misc]
        print(f"bodycam: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", EXIT_FAILED))
    except OSError as exc:
        print(f"bodycam: {describe_os_error(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("bodycam: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
