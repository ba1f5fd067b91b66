"""The ``hopscotch`` command line: search | eval | export | bench | info | doctor.

Every subcommand has ``--help``. Bad arguments and paths print one line and exit non-zero (2 for bad input, 1 for
anything else); warnings print one line each; nothing prints a traceback unless ``HOPSCOTCH_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from . import launch
from .common import CliError

__all__ = ["main"]

_EPILOG = """examples:
  hopscotch search                               # 4 attention blocks of the packaged SmolLM2, ARC-Easy
  hopscotch search --num-skip 6 --method hopscotch --task wikipedia
  hopscotch eval --plan plans/smollm2-arc_easy-k4.json
  hopscotch export --plan plans/smollm2-arc_easy-k4.json --out smollm2-skip4 --format decilm
  hopscotch bench --ks 0,4,15
  hopscotch info
  hopscotch doctor                               # after upgrading transformers or torch
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line naming it (and the way to --help), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import bench_cmd, doctor_cmd, eval_cmd, export_cmd, info_cmd, search_cmd

    p = _Parser(
        prog="hopscotch", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG,
        description="Find the attention blocks a task does not need, skip them, learn four scalars per layer to "
                    "make up for it, and run the thinner model faster.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for mod in (search_cmd, eval_cmd, export_cmd, bench_cmd, info_cmd, doctor_cmd):
        mod.register(sub)
    return p


def _one_line_warnings(command: str) -> None:
    """Warnings (ours and the libraries') print as one line each: ``hopscotch CMD: warning: ...``."""

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
        print(f"hopscotch {command}: warning: {text}", file=file or sys.stderr, flush=True)

    warnings.showwarning = show


def _user_error(exc: Exception) -> bool:
    """Errors about the user's input: printed without their type, exit status 2."""
    from ..arch import UnsupportedModelError
    from ..errors import HopscotchError

    return isinstance(exc, (CliError, HopscotchError, FileNotFoundError, ValueError, UnsupportedModelError))


def _lost_contact(exc: Exception) -> bool:
    from ..search.distributed import DistributedError

    return isinstance(exc, DistributedError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv  # what a launcher (search --nproc) hands on to its processes; None: sys.argv
    saved = warnings.showwarning
    if not os.environ.get("HOPSCOTCH_DEBUG"):
        _one_line_warnings(args.command)
        # torch's notes to library authors about their pytree registrations: torchao 0.18 under torch 2.14 logs
        # two at import, and transformers imports torchao whenever it is installed. Nothing a user can act on.
        logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    try:
        return _run(args)
    finally:
        warnings.showwarning = saved


def _run(args) -> int:
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        if os.environ.get(launch.ERROR_DIR_ENV):  # a rank of `--nproc`: the launcher says it, once
            return 130
        hint = getattr(args, "_interrupt_hint", "")
        print(f"hopscotch {args.command}: interrupted{'; ' + hint if hint else ''}", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line, never a traceback, unless debugging
        if os.environ.get("HOPSCOTCH_DEBUG"):
            raise
        user = _user_error(exc)
        kind = "" if user else f"{type(exc).__name__}: "
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        line = f"hopscotch {args.command}: error: {kind}{msg}"
        if not launch.report_error(args.command, line, lost_contact=_lost_contact(exc)):
            print(line, file=sys.stderr)
        return 2 if user else 1


if __name__ == "__main__":
    sys.exit(main())
