"""Peak resident memory of a disk-offloaded model, unpatched against patched (and a short search on it).

The packaged SmolLM2-135M-Instruct is saved as a plain checkpoint and loaded with ``device_map="auto"``,
``max_memory={"cpu": MAX_MEMORY}`` and an ``offload_folder``, so most of its modules live on disk and accelerate's
hooks load each one for its forward. Each case runs in a fresh process and reports its peak resident set
(VmHWM), beside the same for the model held in memory and for the imports alone:

    python benchmarks/bench_offload.py            # writes benchmarks/results/offload.csv and prints a table
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results  # noqa: E402

CASES = {
    "imports only": "nothing loaded: torch, transformers, hopscotch imported",
    "in memory, unpatched": "the whole model in memory: forward of the prompt, generate 16 tokens",
    "offloaded, unpatched": "offloaded: forward of the prompt, generate 16 tokens",
    "offloaded, patched": "offloaded, patched (nothing skipped): forward, generate 16 tokens; logits compared",
    "offloaded, patched, 4 skipped": "offloaded, blocks 6, 7, 25, 29 skipped: forward, generate 16 tokens",
    "in memory, search": "the whole model in memory: hopscotch-fast, 1 block, 2 batches of 2 x 64 tokens",
    "offloaded, search": "offloaded: the same search",
    "offloaded, search, weights held": "offloaded, the same search with autograd holding the offloaded weights it "
                                       "saves (the re-read for the backward turned off): what the re-read saves",
}


def _peak_mib() -> float:
    """This process's peak resident set (VmHWM; ru_maxrss would carry the parent's over the fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _case(name: str, checkpoint: str, offload: str, max_memory: str) -> dict:
    """One case, in this (fresh) process."""
    import torch
    from transformers import AutoModelForCausalLM

    import hopscotch
    from hopscotch.search import search

    torch.manual_seed(0)
    ids = torch.randint(100, 20000, (1, 64))
    out: dict = {"case": name}
    if name == "imports only":
        return {**out, "peak_rss_mib": round(_peak_mib(), 1)}
    t0 = time.perf_counter()
    kwargs = dict(dtype=torch.float32)
    if name.startswith("offloaded"):
        kwargs.update(device_map="auto", max_memory={"cpu": max_memory}, offload_folder=offload)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, **kwargs).eval()
    if name.startswith("offloaded"):
        placed = list(model.hf_device_map.values())
        out["modules_on_disk"] = f"{placed.count('disk')} of {len(placed)}"
    if name.startswith("offloaded, patched"):
        with torch.no_grad():
            ref = model(ids).logits
        hopscotch.patch_model(model)
        if name.endswith("skipped"):
            hopscotch.set_skips(model, attention=[6, 7, 25, 29])
    if name.endswith("weights held"):
        import contextlib

        import hopscotch.patch.patcher as patcher

        patcher.saved_weights_reloaded = lambda active: contextlib.nullcontext()
    if "search" in name:
        batches = []
        for _ in range(2):
            x = torch.randint(100, 20000, (2, 64))
            labels = x.clone()
            labels[:, :32] = -100
            batches.append({"input_ids": x, "attention_mask": torch.ones_like(x), "labels": labels})
        plan = search(model, batches, method="hopscotch-fast", num_skip=1, budget_ratio=0, refine=0, final_epochs=1,
                      screen_fraction=0.5, generic_weight=0, progress=False)
        out["picked"] = plan.skipped_attention
    else:
        with torch.no_grad():
            logits = model(ids).logits
        if name == "offloaded, patched":
            out["max_logit_diff_vs_unpatched"] = float((logits - ref).abs().max())
        model.generate(ids, max_new_tokens=16, do_sample=False, min_new_tokens=16)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["peak_rss_mib"] = round(_peak_mib(), 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-memory", default="250MB", help="accelerate's max_memory for the CPU (default 250MB)")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)  # one case, in a child process
    p.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)
    p.add_argument("--offload", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(_case(args.case, args.checkpoint, args.offload, args.max_memory)))
        return
    import torch

    from hopscotch.models import load_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model, _ = load_model(None, dtype=torch.float32)
        weights_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        model.save_pretrained(f"{tmp}/model")
        del model
        for name in CASES:
            print(f"{name} ...", file=sys.stderr, flush=True)
            run = subprocess.run([sys.executable, __file__, "--case", name, "--checkpoint", f"{tmp}/model",
                                  "--offload", f"{tmp}/offload-{len(rows)}", "--max-memory", args.max_memory],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
    print(f"SmolLM2-135M-Instruct, float32 weights {weights_mib:.0f} MiB, max_memory cpu {args.max_memory}; "
          f"peak resident memory per case, each in a fresh process")
    print(f"{'case':<32}{'peak RSS MiB':>14}{'seconds':>9}  notes")
    for r in rows:
        notes = {k: v for k, v in r.items() if k not in ("case", "peak_rss_mib", "seconds")}
        print(f"{r['case']:<32}{r['peak_rss_mib']:>14.0f}{r.get('seconds', 0):>9}  {notes or ''}")
    append_results("offload.csv", [{**r, "weights_mib": round(weights_mib, 1), "max_memory": args.max_memory,
                                "notes": json.dumps({k: v for k, v in r.items()
                                                     if k not in ("case", "peak_rss_mib", "seconds")})}
                               for r in rows])


if __name__ == "__main__":
    main()
