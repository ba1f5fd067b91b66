"""``hopscotch bench``: the end-to-end benchmark, HF vs HF-with-identity vs hopscotch, same model, same run."""

from __future__ import annotations

import argparse

from ..bench.choices import FILLS, PROVIDERS, RANDOM_SHAPES
from ..utils import model_dtype
from .common import CliError, about, add_model_args, emit, load_from_args, path_arg, resolve_device, resolve_dtype

DESCRIPTION = """Prefill latency, decode tokens/s, KV-cache bytes and (on CUDA) peak memory for
  hf                  the unpatched transformers model (its DynamicCache)
  hf_identity         the unpatched model with the skipped attention modules replaced by a Python identity
                      (LLM-Drop's way)
  hopscotch           the patched model (fused kernels, its own compact HopscotchCache)
  hopscotch_compiled  the same, each decode step under torch.compile(fullgraph=True) (--compile adds it; on CUDA
                      mode="reduce-overhead": the step replays as a CUDA graph)
with k = 0, 4 and L/2 attention blocks skipped by default (the last k). Ratios are against hf in the same run.
Rows are appended to benchmarks/results/<--csv> with device, torch version, commit and time; a PNG plot is
written next to it. Defaults on CPU: SmolLM2, batch 1 and 8, context 512, 64 new tokens. On CUDA: bf16, batch 1
and 16, contexts 512 and 4096; add --random-shape llama3-8b for a Llama-3-8B-shaped model with random weights."""

def register(sub) -> None:
    p = sub.add_parser("bench", help="end-to-end speed and memory benchmark", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--random-shape", choices=sorted(RANDOM_SHAPES), default=None,
                   help="benchmark a Llama model of this shape with random weights instead of --model")
    p.add_argument("--ks", default="0,4,half", help="skipped attention blocks; 'half' = L/2, 'all' = L "
                                                   "(default 0,4,half)")
    p.add_argument("--providers", default="hf,hf_identity,hopscotch",
                   help="comma-separated, from hf, hf_identity, hopscotch, hopscotch_compiled "
                        "(default hf,hf_identity,hopscotch)")
    p.add_argument("--compile", action="store_true",
                   help="also measure the patched model's decode step under torch.compile (hopscotch_compiled)")
    p.add_argument("--fill", choices=FILLS, default="prefill",
                   help="fill the decode cache by a prefill (default) or with random keys and values of the same "
                        "shapes: decode costs the same, and a long prefill at a large batch takes minutes on a CPU")
    p.add_argument("--batches", default=None, help="decode batch sizes (default 1,8 on CPU; 1,16 on CUDA)")
    p.add_argument("--contexts", default=None, help="prompt lengths (default 512 on CPU; 512,4096 on CUDA)")
    p.add_argument("--new-tokens", type=int, default=64, help="decoded tokens per measurement (default 64)")
    p.add_argument("--budget", type=float, default=2.0, help="seconds per timed measurement (at least 3 reps)")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every case this many times, interleaved, and pool the repetitions: steadier "
                        "figures on a shared or noisy machine (default 1)")
    p.add_argument("--max-kv-fraction", type=float, default=None,
                   help="CUDA: skip decode batches whose full-model KV cache plus the weights would exceed this "
                        "fraction of the device's memory (e.g. 0.6; default: run every batch)")
    p.add_argument("--csv", default="e2e.csv", help="results file under benchmarks/results/ (default e2e.csv)")
    p.add_argument("--no-plot", action="store_true")
    p.set_defaults(handler=run)


def _ints(text: str, name: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CliError(f"--{name} {text!r}: expected comma-separated integers") from None
    if not values or any(v <= 0 for v in values):
        raise CliError(f"--{name} {text!r}: expected positive integers")
    return values


def _ks_tokens(text: str) -> list[str]:
    """The --ks entries, checked before anything is loaded."""
    tokens = [x.strip() for x in text.split(",") if x.strip()]
    if not tokens or any(x not in ("half", "L/2", "all", "L") and not x.isdigit() for x in tokens):
        raise CliError(f"--ks {text!r}: expected integers, 'half' or 'all'")
    return tokens


def _ks(text: str, num_layers: int) -> list[int]:
    ks = []
    for x in _ks_tokens(text):
        k = num_layers // 2 if x in ("half", "L/2") else num_layers if x in ("all", "L") else int(x)
        if not 0 <= k <= num_layers:
            raise CliError(f"--ks {text!r}: {k} is out of range; expected 0 to {num_layers} for a model with "
                           f"{num_layers} layers")
        ks.append(k)
    return sorted(set(ks))


def run(args) -> int:
    from ..bench.e2e import E2EConfig, attention_gain, random_model, run_e2e
    from ..bench.results import append_results

    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    if args.compile and "hopscotch_compiled" not in providers:
        providers.append("hopscotch_compiled")
    bad = [p for p in providers if p not in PROVIDERS]
    if bad:
        raise CliError(f"--providers {args.providers!r}: unknown {', '.join(bad)}; expected some of "
                       f"{', '.join(PROVIDERS)}")
    _ks_tokens(args.ks)
    if args.rounds < 1:
        raise CliError(f"--rounds {args.rounds}: expected 1 or more")
    if args.new_tokens < 1:
        raise CliError(f"--new-tokens {args.new_tokens}: expected 1 or more decoded tokens per measurement")
    if not args.budget > 0:
        raise CliError(f"--budget {args.budget}: expected a positive number of seconds")
    if args.max_kv_fraction is not None and not 0 < args.max_kv_fraction <= 1:
        raise CliError(f"--max-kv-fraction {args.max_kv_fraction}: expected a fraction in (0, 1]")
    from ..bench.results import results_path

    path_arg("--csv", results_path(args.csv), output=True)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    batches = _ints(args.batches or ("1,16" if cuda else "1,8"), "batches")
    contexts = _ints(args.contexts or ("512,4096" if cuda else "512"), "contexts")
    if args.random_shape:
        model = random_model(args.random_shape, device, resolve_dtype(args.dtype, device))
        name = f"random {args.random_shape}"
    else:
        model, _, _ = load_from_args(args, with_tokenizer=False)
        name = args.model or "SmolLM2-135M-Instruct"
    L = model.config.num_hidden_layers
    ks = _ks(args.ks, L)
    max_kv = None
    if args.max_kv_fraction is not None:
        if cuda:
            import torch

            weights = sum(p.numel() * p.element_size() for p in model.parameters())
            max_kv = int(args.max_kv_fraction * torch.cuda.get_device_properties(device).total_memory) - weights
    rows, gains, over = [], [], []
    for ctx in contexts:
        if ctx + args.new_tokens > model.config.max_position_embeddings:
            raise CliError(f"--contexts {ctx} + {args.new_tokens} new tokens exceeds the model's "
                           f"{model.config.max_position_embeddings} positions")
        cfg = E2EConfig(ks=ks, providers=providers, decode_batches=batches, prompt_len=ctx,
                        new_tokens=args.new_tokens, budget_s=args.budget, rounds=args.rounds, fill=args.fill,
                        max_kv_bytes=max_kv)
        if max_kv is not None:
            from ..bench.e2e import kv_bytes_per_token

            per_seq = (ctx + args.new_tokens) * kv_bytes_per_token(model.config, model_dtype(model), L)
            over += [(ctx, b) for b in batches if b * per_seq > max_kv]
        part = run_e2e(model, cfg, progress=not (args.quiet or args.json))
        for r in part:
            r.update({"context": ctx, "model": name, "dtype": str(model_dtype(model))})
        rows += part
        gains += [{**g, "context": ctx} for g in attention_gain(part, L)]
    with about("--csv", args.csv, "write", refusals=False):
        path = append_results(args.csv, rows, device)
    plot = None
    if not args.no_plot:
        from ..bench.plot import plot_e2e

        plot = plot_e2e(rows, path.with_name(path.stem + f"_{device.type}.png"), title=f"{name} on {device.type}")
    table = _table(rows, gains, path, plot)
    if over:
        table += ("\nskipped, their KV cache over --max-kv-fraction of the device's memory: "
                  + ", ".join(f"ctx {c} batch {b}" for c, b in over))
    emit(args, {"csv": str(path), "plot": str(plot) if plot else None, "rows": rows, "attention_gain": gains,
                "skipped_over_memory": [{"context": c, "batch": b} for c, b in over]}, table)
    return 0


def _table(rows, gains, path, plot) -> str:
    head = (f"{'phase':<8}{'provider':<19}{'k':>3}{'batch':>6}{'ctx':>6}{'ms':>10}{'tok/s':>10}{'x hf':>7}"
            f"{'KV MB':>9}{'peak MB':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        kv = r.get("kv_cache_bytes")
        peak = r.get("peak_mem_bytes")
        lines.append(f"{r['phase']:<8}{r['provider']:<19}{r['k']:>3}{r['batch']:>6}{r['context']:>6}"
                     f"{r['ms_median']:>10.2f}{r['tokens_per_s']:>10.1f}{r['speedup_vs_hf'] or 0:>7.2f}"
                     f"{(kv / 1e6 if kv is not None else 0):>9.2f}{(peak / 1e6 if peak else 0):>9.1f}")
    if gains:
        lines.append("")
        lines.append("share of the ideal attention saving each k achieves (hopscotch; 1.0 = all of it):")
        for g in gains:
            lines.append(f"  {g['phase']:<8} batch {g['batch']:>3} ctx {g['context']:>5} k={g['k']:>2}: "
                         f"{g['gain_vs_ideal']}")
    lines.append(f"\nrows appended to {path}" + (f"; plot {plot}" if plot else ""))
    return "\n".join(lines)
