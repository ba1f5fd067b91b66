"""What the skip buys in ExecuTorch: the full model's .pte against thin ones in ExecuTorch's CPU runtime, same run.

    bash scripts/install_executorch.sh                       # once: executorch (+ its torch) in .venv-executorch
    python benchmarks/bench_executorch.py                    # packaged SmolLM2, k = 0,4,8,15, context 512, 3 rounds
    python benchmarks/bench_executorch.py --ks 4 --rounds 1 --threads 1

The model is exported with ``format="executorch"`` in full and once per k with the last k attention blocks skipped,
and each export lowered to a .pte by ExecuTorch's own Llama export (KV cache of context + new tokens, XNNPACK,
float32), all in one ExecuTorch process (k = 0's checkpoint is the full one: its .pte is a copy, the export being
deterministic). The .pte files are loaded by ExecuTorch's runtime in one process in its venv
(``--threads`` sets its thread pool); see benchmarks/ondevice.py for what is measured, the interleaving and the ideal.
ExecuTorch's Llama attention reads the whole preallocated cache at every step (masked), so the decode ideal counts
K and V at the .pte's capacity. The KV-cache bytes are the program's: its tensors of the cache's shape
([1, kv heads, capacity, head_dim]) come in a fixed number per attention layer that has a cache (the full model
gives the number), two of which are the K and V buffers. The file bytes are the .pte's. Rows go to
benchmarks/results/executorch.csv.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


# ---- engine side: runs in ExecuTorch's venv, so it imports torch, ExecuTorch and the standard library only ----

def engine_side(job_path: str, out_path: str) -> int:
    import importlib.metadata as metadata

    import torch
    from executorch.extension.pybindings import _C
    from executorch.runtime import Runtime

    sys.path.insert(0, str(REPO / "python" / "hopscotch" / "export"))
    from executorch_pte import pte_summary  # needs nothing from hopscotch

    job = json.loads(Path(job_path).read_text())
    if job["threads"]:
        _C._unsafe_reset_threadpool(job["threads"])
    methods = {key: Runtime.get().load_program(p).load_method("forward") for key, p in job["models"].items()}
    prompt = torch.tensor([job["prompt"]], dtype=torch.long)
    steps = [torch.tensor([[t]], dtype=torch.long) for t in job["steps"]]

    def run(method, n_prompt: int, n_steps: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        method.execute([prompt[:, :n_prompt], torch.tensor([0], dtype=torch.long)])
        t1 = time.perf_counter()
        for i, x in enumerate(steps[:n_steps]):
            method.execute([x, torch.tensor([n_prompt + i], dtype=torch.long)])
        return t1 - t0, time.perf_counter() - t1

    for method in methods.values():  # untimed: page the weights in, set the delegates up
        run(method, 64, 4)
    keys, times = list(methods), {k: [] for k in methods}
    for r in range(job["rounds"]):
        for key in keys[r % len(keys):] + keys[: r % len(keys)]:  # who goes first rotates
            prefill_s, decode_s = run(methods[key], len(job["prompt"]), len(steps))
            times[key].append({"prefill_s": prefill_s, "decode_s": decode_s})
            print(f"  round {r + 1}/{job['rounds']} {key}: prefill {len(job['prompt']) / prefill_s:.0f} tok/s, "
                  f"decode {len(steps) / decode_s:.1f} tok/s", flush=True)
    summaries = {k: pte_summary(p, job["kv_shape"]) for k, p in job["models"].items()}
    per_layer = summaries["full"]["kv_tensors"] / job["layers"]
    kv_buffer = 2 * 4 * job["kv_shape"][1] * job["kv_shape"][2] * job["kv_shape"][3]  # K and V, float32
    Path(out_path).write_text(json.dumps({
        "times": times, "file_bytes": {k: s["file_bytes"] for k, s in summaries.items()},
        "kv_bytes": {k: round(s["kv_tensors"] / per_layer) * kv_buffer for k, s in summaries.items()},
        "planned_bytes": {k: s["planned_bytes"] for k, s in summaries.items()},
        "versions": {p: metadata.version(p) for p in ("executorch", "torch")}}))
    return 0


# ---- main side: hopscotch's venv ----

def main(argv=None) -> int:
    from ondevice import add_args, costs, last_k_plans, print_table, random_job, rows, run_engine, runtime_python

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(p, "--executorch-venv", "ExecuTorch's venv (default $HOPSCOTCH_EXECUTORCH_VENV or .venv-executorch)",
             "executorch.csv")
    p.add_argument("--lower-jobs", type=int, default=1,
                   help="ExecuTorch export processes at once (default 1; each takes ~4 GB for SmolLM2)")
    args = p.parse_args(argv)
    if args.engine_side:
        return engine_side(*args.engine_side)
    python = runtime_python(args.executorch_venv, "HOPSCOTCH_EXECUTORCH_VENV", REPO / ".venv-executorch",
                            "bash scripts/install_executorch.sh")
    from common import append_results  # benchmarks/common.py: results go to benchmarks/results

    from hopscotch import export_model
    from hopscotch.export.executorch_export import PTE, lower_exports
    from hopscotch.models import load_model

    model = load_model(args.model, with_tokenizer=False)
    cfg = model.config
    ks = [int(k) for k in args.ks.split(",") if k.strip()]
    capacity = args.context + args.new_tokens
    job = {**random_job(model, args), "layers": cfg.num_hidden_layers,
           "kv_shape": [1, cfg.num_key_value_heads, capacity, cfg.hidden_size // cfg.num_attention_heads]}
    start = time.time()
    plans = last_k_plans(model, ks)
    with tempfile.TemporaryDirectory(prefix="hopscotch-executorch-bench-") as tmp:
        work = Path(tmp)
        dirs = {str(key): export_model(model, plan, work / f"m-{key}", format="executorch")
                for key, plan in plans.items()}
        t0 = time.time()
        # k = 0 writes the full model's checkpoint again: ExecuTorch's export is deterministic, so its .pte is a copy
        unique = [d for key, d in dirs.items() if key != "0"]
        chunks = [unique[i::args.lower_jobs] for i in range(min(args.lower_jobs, len(unique)))]
        with ThreadPoolExecutor(len(chunks)) as pool:  # each chunk: one ExecuTorch process
            list(pool.map(lambda i: lower_exports(python, chunks[i], context=capacity, log=work / f"lower{i}.log"),
                          range(len(chunks))))
        if "0" in dirs:
            assert (dirs["0"] / "model.pth").read_bytes() == (dirs["full"] / "model.pth").read_bytes()
            shutil.copyfile(dirs["full"] / PTE, dirs["0"] / PTE)
        print(f"  lowered {len(unique)} exports to .pte in {time.time() - t0:.0f} s ({len(chunks)} processes)",
              flush=True)
        job["models"] = {key: str(d / PTE) for key, d in dirs.items()}
        res = run_engine(python, __file__, job, work, what="ExecuTorch")
    versions = res["versions"]
    out = rows("executorch", res, {key: costs(model, plan, 4) for key, plan in plans.items()}, ks,
               context=args.context, new_tokens=args.new_tokens, kv_read_context=capacity, bytes_per_value=4,
               extra={"dtype": "float32", "capacity": capacity, "threads": args.threads or "default",
                      "executorch": versions["executorch"], "executorch_torch": versions["torch"],
                      "load_avg_1m": round(os.getloadavg()[0], 2),
                      "model": Path(getattr(cfg, "_name_or_path", "") or "model").name})
    for r in out:
        r["planned_bytes_full"], r["planned_bytes_thin"] = (res["planned_bytes"]["full"],
                                                            res["planned_bytes"][str(r["k"])])
    path = append_results(args.csv, out, device="cpu")
    print_table(f"ExecuTorch {versions['executorch']} (CPU runtime, XNNPACK), float32 .pte, KV cache {capacity} "
                f"tokens, prompt {args.context} tokens then {args.new_tokens} decoded, batch 1, {args.rounds} "
                f"interleaved rounds, {args.threads or 'default'} threads, last k attention blocks skipped "
                f"({time.time() - start:.0f} s, load average {os.getloadavg()[0]:.1f})", out, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
