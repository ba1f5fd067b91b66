"""The ``hopscotch`` command line: search | eval | export | bench | info | doctor.

Every subcommand has ``--help``. Bad arguments and paths print one line and exit non-zero; nothing prints a
traceback unless ``HOPSCOTCH_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import os
import sys

from .common import CliError

__all__ = ["main", "build_parser"]

_EPILOG = """examples:
  hopscotch search                               # 4 attention blocks of the packaged SmolLM2, ARC-Easy
  hopscotch search --num-skip 6 --method hopscotch --task wikipedia
  hopscotch eval --plan plans/smollm2-arc_easy-k4.json
  hopscotch export --plan plans/smollm2-arc_easy-k4.json --out smollm2-skip4 --format decilm
  hopscotch bench --ks 0,4,15
  hopscotch info
  hopscotch doctor                               # after upgrading transformers or torch
"""


def build_parser() -> argparse.ArgumentParser:
    from . import bench_cmd, doctor_cmd, eval_cmd, export_cmd, info_cmd, search_cmd

    p = argparse.ArgumentParser(
        prog="hopscotch", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG,
        description="Find the attention blocks a task does not need, skip them, learn four scalars per layer to "
                    "make up for it, and run the thinner model faster.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in (search_cmd, eval_cmd, export_cmd, bench_cmd, info_cmd, doctor_cmd):
        mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        hint = getattr(args, "_interrupt_hint", "")
        print(f"hopscotch {args.command}: interrupted{'; ' + hint if hint else ''}", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line, never a traceback, unless debugging
        if os.environ.get("HOPSCOTCH_DEBUG"):
            raise
        code = 2 if isinstance(exc, (CliError, FileNotFoundError, ValueError)) else 1
        kind = "" if isinstance(exc, (CliError, ValueError, FileNotFoundError)) else f"{type(exc).__name__}: "
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"hopscotch {args.command}: error: {kind}{msg}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
