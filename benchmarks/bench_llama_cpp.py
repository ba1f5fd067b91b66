"""The thin model where it counts: full vs thin GGUF in llama.cpp, prompt and decode tokens/s, same run.

    bash scripts/install_llama_cpp.sh                     # once: llama.cpp through llama-cpp-python
    python benchmarks/bench_llama_cpp.py                  # packaged SmolLM2, k = 0,4,8,15, contexts 512 and 4096
    python benchmarks/bench_llama_cpp.py --ks 4 --contexts 512 --rounds 1 --dtype q8_0

Skipped blocks are the last k attention blocks (the speed does not depend on which). Rows go to
benchmarks/results/llama_cpp.csv with the CPU, versions (llama-cpp-python, llama.cpp commit, torch, hopscotch),
git commit and time; see hopscotch.bench.llama_cpp for what is measured and what "ideal" means.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from common import append_results  # benchmarks/common.py: results go to benchmarks/results

from hopscotch.bench.llama_cpp import LlamaCppBenchConfig, LlamaCppMissing, require_llama_cpp, run_llama_cpp_bench
from hopscotch.export.gguf_export import GGUF_DTYPES


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="HF directory or .gguf (default: the packaged SmolLM2)")
    p.add_argument("--ks", default="0,4,8,half", help="skipped attention blocks, 'half' = L/2 (default 0,4,8,half)")
    p.add_argument("--contexts", default="512,4096", help="prompt lengths (default 512,4096)")
    p.add_argument("--new-tokens", type=int, default=64, help="decoded tokens per measurement (default 64)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds, medians over them (default 3)")
    p.add_argument("--dtype", default="f16", choices=sorted(GGUF_DTYPES), help="GGUF weight type (default f16)")
    p.add_argument("--no-flash-attn", action="store_true", help="llama.cpp without flash attention")
    p.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    p.add_argument("--csv", default="llama_cpp.csv", help="results file under benchmarks/results/")
    args = p.parse_args(argv)
    try:
        require_llama_cpp()
    except LlamaCppMissing as exc:
        print(f"bench_llama_cpp: {exc}", file=sys.stderr)
        return 2
    from hopscotch.models import load_model

    model = load_model(args.model, with_tokenizer=False)
    n = model.config.num_hidden_layers
    ks = [n // 2 if k.strip() in ("half", "L/2") else int(k) for k in args.ks.split(",") if k.strip()]
    cfg = LlamaCppBenchConfig(ks=ks, contexts=_ints(args.contexts), new_tokens=args.new_tokens, rounds=args.rounds,
                              dtype=args.dtype, flash_attn=not args.no_flash_attn, threads=args.threads)
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="hopscotch-llama-cpp-") as tmp:
        rows = run_llama_cpp_bench(model, cfg, tmp)
    path = append_results(args.csv, rows, device="cpu")
    print(f"\nllama.cpp, {cfg.dtype} weights, f16 KV, flash attention {'on' if cfg.flash_attn else 'off'}, "
          f"last k attention blocks skipped ({time.time() - start:.0f} s)\n")
    print("| phase | context | k | full tok/s | thin tok/s | speed-up | ideal | share of ideal gain |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        share = (r["speedup"] - 1) / (r["ideal_speedup"] - 1) if r["ideal_speedup"] > 1 else float("nan")
        print(f"| {r['phase']} | {r['context']} | {r['k']} | {r['tok_s_full']:.1f} | {r['tok_s_thin']:.1f} | "
              f"x{r['speedup']:.3f} | x{r['ideal_speedup']:.3f} | {share:.0%} |")
    print(f"\nrows appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
