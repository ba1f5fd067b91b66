"""What the skip buys in MLX: the full decilm export against thin ones in mlx-lm (its CPU build here), same run.

    bash scripts/install_mlx.sh                              # once: mlx[cpu] + mlx-lm in .venv-mlx
    python benchmarks/bench_mlx.py                           # packaged SmolLM2, k = 0,4,8,15, context 512, 3 rounds
    python benchmarks/bench_mlx.py --ks 4 --rounds 1 --threads 1

The model is exported with ``format="decilm"`` in full and once per k with the last k attention blocks skipped, in
float32 (what MLX's CPU backend computes in). All of them are loaded in one MLX process (``mlx_lm.utils.load_model``)
in MLX's venv; see benchmarks/ondevice.py for what is measured, the interleaving and the ideal. The KV-cache bytes
are MLX's own: ``sum(entry.nbytes)`` over the prompt cache (``make_prompt_cache``) after the prompt and the decoded
tokens (mlx-lm allocates K and V in steps of 256 tokens). Rows go to benchmarks/results/mlx.csv.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


# ---- engine side: runs in MLX's venv, so it imports MLX, mlx-lm and the standard library only ----

def engine_side(job_path: str, out_path: str) -> int:
    import importlib.metadata as metadata

    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.utils import load_model

    job = json.loads(Path(job_path).read_text())
    mx.set_default_device(mx.cpu)
    models = {key: load_model(Path(d))[0] for key, d in job["models"].items()}
    prompt, steps = mx.array([job["prompt"]]), [mx.array([[t]]) for t in job["steps"]]

    def run(model, n_prompt: int, n_steps: int) -> tuple[float, float, list]:
        cache = make_prompt_cache(model)
        t0 = time.perf_counter()
        mx.eval(model(prompt[:, :n_prompt], cache=cache))
        t1 = time.perf_counter()
        for x in steps[:n_steps]:
            mx.eval(model(x, cache=cache))
        return t1 - t0, time.perf_counter() - t1, cache

    for model in models.values():  # untimed: page the weights in
        run(model, 64, 4)
    keys, times, kv = list(models), {k: [] for k in models}, {}
    for r in range(job["rounds"]):
        for key in keys[r % len(keys):] + keys[: r % len(keys)]:  # who goes first rotates
            prefill_s, decode_s, cache = run(models[key], len(job["prompt"]), len(steps))
            times[key].append({"prefill_s": prefill_s, "decode_s": decode_s})
            kv[key] = sum(c.nbytes for c in cache)
            print(f"  round {r + 1}/{job['rounds']} {key}: prefill {len(job['prompt']) / prefill_s:.0f} tok/s, "
                  f"decode {len(steps) / decode_s:.1f} tok/s, {len(cache)} cache entries", flush=True)
    files = {k: sum(p.stat().st_size for p in Path(d).glob("*.safetensors")) for k, d in job["models"].items()}
    Path(out_path).write_text(json.dumps({"times": times, "kv_bytes": kv, "file_bytes": files,
                                          "versions": {p: metadata.version(p) for p in ("mlx", "mlx-lm")}}))
    return 0


# ---- main side: hopscotch's venv ----

def main(argv=None) -> int:
    from ondevice import add_args, costs, last_k_plans, print_table, random_job, rows, run_engine, runtime_python

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(p, "--mlx-venv", "MLX's venv (default $HOPSCOTCH_MLX_VENV or .venv-mlx)", "mlx.csv")
    args = p.parse_args(argv)
    if args.engine_side:
        return engine_side(*args.engine_side)
    python = runtime_python(args.mlx_venv, "HOPSCOTCH_MLX_VENV", REPO / ".venv-mlx", "bash scripts/install_mlx.sh")
    from common import append_results  # benchmarks/common.py: results go to benchmarks/results

    from hopscotch import export_model
    from hopscotch.models import load_model

    model = load_model(args.model, with_tokenizer=False)
    ks = [int(k) for k in args.ks.split(",") if k.strip()]
    job = random_job(model, args)
    start = time.time()
    plans = last_k_plans(model, ks)
    with tempfile.TemporaryDirectory(prefix="hopscotch-mlx-bench-") as tmp:
        work = Path(tmp)
        job["models"] = {str(key): str(export_model(model, plan, work / f"m-{key}", format="decilm"))
                         for key, plan in plans.items()}
        res = run_engine(python, __file__, job, work, threads=args.threads, what="MLX")
    versions = res["versions"]
    out = rows("mlx", res, {key: costs(model, plan, 4) for key, plan in plans.items()}, ks, context=args.context,
               new_tokens=args.new_tokens, kv_read_context=args.context + args.new_tokens / 2, bytes_per_value=4,
               extra={"dtype": "float32", "threads": args.threads or "default", "mlx": versions["mlx"],
                      "mlx_lm": versions["mlx-lm"], "load_avg_1m": round(os.getloadavg()[0], 2),
                      "model": Path(getattr(model.config, "_name_or_path", "") or "model").name})
    path = append_results(args.csv, out, device="cpu")
    print_table(f"MLX {versions['mlx']} / mlx-lm {versions['mlx-lm']} (CPU), decilm exports, float32, prompt "
                f"{args.context} tokens then {args.new_tokens} decoded, batch 1, {args.rounds} interleaved rounds, "
                f"{args.threads or 'default'} threads, last k attention blocks skipped ({time.time() - start:.0f} s, "
                f"load average {os.getloadavg()[0]:.1f})", out, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
