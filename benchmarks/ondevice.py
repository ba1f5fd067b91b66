"""Shared by bench_mlx.py and bench_executorch.py: the full model against thin ones in an on-device runtime that lives
in a venv of its own (the script runs itself there with ``--engine-side JOB OUT``; JSON in, JSON out).

The engine side times, for each model in turn (who goes first rotating between rounds), a ``context``-token prompt
(prefill) and ``new_tokens`` single-token steps after it (decode), batch 1, and reports per model its file bytes and
its KV-cache bytes at that context, read from the runtime's own objects. Here:
- speed-ups are the median over rounds of each round's full/thin time ratio (steadier than a ratio of medians when
  the machine's speed drifts); k = 0 is a second copy of the full model: its row is the noise floor;
- the ideal decode speed-up is the ratio of bytes read per decoded token (``hopscotch.bench.llama_cpp.decode_bytes``:
  every weight once, the embedding row aside, plus the kept layers' K and V at the context the runtime reads), the
  ideal prefill speed-up the ratio of FLOPs per prompt token (``prompt_flops``), as bench_llama_cpp.py computes them;
- the ideal file is the full file less the skipped blocks' q/k/v/o and input-norm bytes; the ideal KV cache is the
  full one times kept / all attention layers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
from pathlib import Path

# The standard library only at the top: the engine side imports this file in the runtime's venv too.
ENGINE_TIMEOUT_S = 3600


def add_args(p: argparse.ArgumentParser, venv_flag: str, venv_help: str, csv: str) -> None:
    """The options bench_mlx.py and bench_executorch.py share."""
    p.add_argument("--model", default=None, help="HF directory (default: the packaged SmolLM2)")
    p.add_argument("--ks", default="0,4,8,15", help="skipped attention blocks, the last k (default 0,4,8,15)")
    p.add_argument("--context", type=int, default=512, help="prompt tokens (default 512)")
    p.add_argument("--new-tokens", type=int, default=64, help="decoded tokens per measurement (default 64)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds, medians over them (default 3)")
    p.add_argument("--threads", type=int, default=None, help="the engine's threads (default: its own choice)")
    p.add_argument(venv_flag, default=None, help=venv_help)
    p.add_argument("--csv", default=csv, help="results file under benchmarks/results/")
    p.add_argument("--engine-side", nargs=2, metavar=("JOB", "OUT"), help=argparse.SUPPRESS)


def runtime_python(venv: str | None, env_var: str, default: Path, install: str) -> Path:
    python = Path(venv or os.environ.get(env_var) or default) / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"no runtime at {python}; install it with `{install}`")
    return python


def random_job(model, args) -> dict:
    """The prompt and the decoded tokens (random ids, fixed seed), the same for every model."""
    import numpy as np

    rng = np.random.default_rng(0)
    vocab = model.config.vocab_size
    return {"prompt": rng.integers(10, vocab, args.context).tolist(),
            "steps": rng.integers(10, vocab, args.new_tokens).tolist(), "rounds": args.rounds,
            "threads": args.threads}


def last_k_plans(model, ks: list[int]) -> dict:
    """{"full": no skips, k: the last k attention blocks skipped} (which blocks does not change the speed)."""
    from hopscotch import SkipPlan

    n = model.config.num_hidden_layers
    plans = {"full": SkipPlan.for_model(model, [], [], method="none")}
    for k in ks:
        if not 0 <= k < n:
            raise SystemExit(f"k = {k}: expected 0 <= k < {n}")
        plans[k] = SkipPlan.for_model(model, list(range(n - k, n)), [], method="last-k")
    return plans


def costs(model, plan, bytes_per_value: int) -> dict:
    """The ideal model's inputs for one plan: bytes of the weights read per decoded token, the KV row width, weight
    FLOPs and query width per token (plan_costs), and the bytes of the skipped blocks' weights."""
    from bench_vllm import plan_costs  # benchmarks/bench_vllm.py: weight FLOPs, query width, kept layers of a plan

    cfg = model.config
    c = plan_costs(model, plan)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    attn = (2 * cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * head_dim * cfg.hidden_size + cfg.hidden_size
    matmul_values = (c["weight_flops"] // 2)  # kept matmuls + the head
    norms = (2 * cfg.num_hidden_layers + 1) * cfg.hidden_size
    return {**c, "weight_bytes": bytes_per_value * (matmul_values + norms + cfg.hidden_size),  # + 1 embedding row
            "kv_width": c["kv_layers"] * cfg.num_key_value_heads * head_dim,
            "skipped_bytes": bytes_per_value * attn * len(plan.skipped_attention)}


def run_engine(python: Path, script: str, job: dict, work: Path, *, env: dict | None = None,
               threads: int | None = None, timeout: float = ENGINE_TIMEOUT_S, what: str = "the engine side") -> dict:
    """``python script --engine-side JOB OUT`` (the runtime's venv, no trace of this one, no hub) in its own process
    group, killed whatever happens; ``threads`` sets OMP / OpenBLAS / MKL threads. Returns OUT's JSON."""
    job_path, out_path, log = work / "job.json", work / "out.json", work / "engine.log"
    job_path.write_text(json.dumps(job))
    out_path.unlink(missing_ok=True)
    full_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    full_env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})})
    if threads:
        full_env.update({v: str(threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    with open(log, "w") as f:
        proc = subprocess.Popen([str(python), script, "--engine-side", str(job_path), str(out_path)], stdout=f,
                                stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        rc = "timed out"
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if rc != 0 or not out_path.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise SystemExit(f"{Path(script).stem}: {what} failed ({rc}); the end of its log:\n{tail}")
    return json.loads(out_path.read_text())


def rotated(keys: list, r: int) -> list:
    """Round ``r``'s order: who goes first rotates."""
    return keys[r % len(keys):] + keys[: r % len(keys)]


def rows(engine: str, res: dict, plan_costs_: dict, ks: list[int], *, context: int, new_tokens: int,
         kv_read_context: float, bytes_per_value: int, extra: dict) -> list[dict]:
    """One row per k: prefill and decode tok/s full / thin, speed-ups and their ideals, file and KV bytes and theirs.
    ``kv_read_context``: the context whose K and V a decode step reads (the tokens cached, or the whole capacity
    for a runtime that attends over all of it)."""
    from hopscotch.bench.llama_cpp import decode_bytes, prompt_flops

    times, full = res["times"], res["times"]["full"]
    out = []
    for k in ks:
        thin, c_full, c_thin = times[str(k)], plan_costs_["full"], plan_costs_[k]
        row = {"engine": engine, "k": k, "context": context, "new_tokens": new_tokens, "rounds": len(full)}
        for phase, tokens in (("prefill", context), ("decode", new_tokens)):
            f_s, t_s = [t[f"{phase}_s"] for t in full], [t[f"{phase}_s"] for t in thin]
            if phase == "decode":
                ideal = decode_bytes(c_full, kv_read_context, bytes_per_value) / \
                    decode_bytes(c_thin, kv_read_context, bytes_per_value)
            else:
                ideal = prompt_flops(c_full, context) / prompt_flops(c_thin, context)
            row.update({f"{phase}_tok_s_full": tokens / statistics.median(f_s),
                        f"{phase}_tok_s_thin": tokens / statistics.median(t_s),
                        f"{phase}_speedup": statistics.median(f / t for f, t in zip(f_s, t_s)),
                        f"{phase}_ideal": ideal, f"{phase}_s_full_all": " ".join(f"{x:.3f}" for x in f_s),
                        f"{phase}_s_thin_all": " ".join(f"{x:.3f}" for x in t_s)})
        fb_full, fb_thin = res["file_bytes"]["full"], res["file_bytes"][str(k)]
        kv_full, kv_thin = res["kv_bytes"]["full"], res["kv_bytes"][str(k)]
        row.update({"file_bytes_full": fb_full, "file_bytes_thin": fb_thin,
                    "file_bytes_ideal": fb_full - c_thin["skipped_bytes"], "kv_bytes_full": kv_full,
                    "kv_bytes_thin": kv_thin, "kv_bytes_ideal": kv_full * c_thin["kv_layers"] / c_full["kv_layers"],
                    "kv_layers_thin": c_thin["kv_layers"], "skipped": f"last {k}", **extra})
        out.append(row)
    return out


def print_table(title: str, rows_: list[dict], path: Path) -> None:
    print(f"\n{title}\n")
    print("| k | prefill tok/s full / thin | x (ideal) | decode tok/s full / thin | x (ideal) | file MB full / thin "
          "(ideal) | KV MB full / thin (ideal) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows_:
        print(f"| {r['k']} | {r['prefill_tok_s_full']:.1f} / {r['prefill_tok_s_thin']:.1f} | "
              f"x{r['prefill_speedup']:.3f} (x{r['prefill_ideal']:.3f}) | {r['decode_tok_s_full']:.1f} / "
              f"{r['decode_tok_s_thin']:.1f} | x{r['decode_speedup']:.3f} (x{r['decode_ideal']:.3f}) | "
              f"{r['file_bytes_full'] / 1e6:.1f} / {r['file_bytes_thin'] / 1e6:.1f} "
              f"({r['file_bytes_ideal'] / 1e6:.1f}) | "
              f"{r['kv_bytes_full'] / 1e6:.2f} / {r['kv_bytes_thin'] / 1e6:.2f} ({r['kv_bytes_ideal'] / 1e6:.2f}) |")
    print(f"\nrows appended to {path}")
