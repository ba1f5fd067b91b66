"""``hopscotch doctor``: check, in seconds, that the patch works with the torch and transformers installed here."""

from __future__ import annotations

import argparse
import json
import sys

DESCRIPTION = """Checks, on a tiny random model of every supported architecture (llama, llama without GQA, qwen2,
mistral, qwen3), that the patched model still computes what the original computes with the torch and
transformers installed here: patched == original, a skipped block == the original with that attention block
replaced by an identity, cached generate() == uncached, the compact KV cache's size, and that the compiled
kernels (not the pure-torch fallback) ran. One line per check; exit status 1 when any check fails.
Run it after upgrading transformers or torch."""


def register(sub) -> None:
    p = sub.add_parser("doctor", help="check the patch against the installed torch / transformers (seconds)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", action="append", metavar="ARCH",
                   help="check only this tiny architecture (repeatable; default: all)")
    p.add_argument("--allow-fallback", action="store_true",
                   help="do not fail when the pure-torch fallback runs instead of compiled kernels")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..doctor import run_checks, versions
    from ..testing import TINY_ARCHS
    from .common import CliError

    for arch in args.arch or []:
        if arch not in TINY_ARCHS:
            raise CliError(f"--arch {arch!r}; expected one of {', '.join(TINY_ARCHS)}")
    ver = versions()
    if not args.json:
        print("hopscotch doctor: " + "  ".join(f"{k} {v}" for k, v in ver.items()), flush=True)

    def show(arch, res):
        if not args.json:
            mark = "ok  " if res.ok else "FAIL"
            print(f"{mark} {arch:<9} {res.name:<28} {res.detail}  ({res.seconds:.2f} s)", flush=True)

    results = run_checks(args.arch, on_result=show)
    failed = [(a, r) for a, r in results
              if not r.ok and not (args.allow_fallback and r.name == "compiled kernels ran"
                                   and "fallback ran" in r.detail)]
    if args.json:
        print(json.dumps({"versions": ver, "checks": [{"arch": a, "check": r.name, "ok": r.ok, "detail": r.detail,
                                                       "seconds": round(r.seconds, 3)} for a, r in results],
                          "failed": len(failed)}, indent=2))
    else:
        print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if failed:
        print(f"hopscotch doctor: {len(failed)} check(s) failed with transformers {ver['transformers']} and torch "
              f"{ver['torch']}; see the lines marked FAIL", file=sys.stderr)
        return 1
    return 0
