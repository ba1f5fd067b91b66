"""The one PASS / FAIL table gpu_suite.sh ends with: every step's result, and the decode-speed targets of the
decode-step work checked against the decode grid it measured. Exit status 1 when anything FAILed.

    python benchmarks/gpu_suite_verdict.py STEPS.txt DECODE.csv --shape llama3-8b --device cuda [--report-only]

STEPS.txt: one line per step, "<name> <ok|FAIL|skip> <seconds or reason>" (what gpu_suite.sh writes). Targets
(decode rows; "patched" = the faster of hopscotch and hopscotch_compiled in the same cell):
  speed-vs-hf      patched k = 0 >= 1.3 x HF eager tokens/s, at every batch and context
  bandwidth-b1     batch 1, every k and context: the bandwidth floor's time per token (bytes a step must read,
                   i.e. every weight once but the embedding table's other rows and the skipped attention blocks',
                   plus the K/V read at the mean decode context, at the device's measured copy bandwidth) >= 70%
                   of the patched time per token
  k16-vs-ideal     hopscotch (eager) at k = 16, every batch and context: >= 90% of the ideal saving
                   (hopscotch.bench.e2e.attention_gain: needs the k = 0 and k = L rows)
--report-only (the CPU smoke run: a tiny shape, where the targets mean nothing) prints the same numbers as INFO.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import defaultdict

import torch

SPEED_VS_HF, BANDWIDTH_SHARE, IDEAL_SHARE, IDEAL_K = 1.3, 0.70, 0.90, 16


def copy_bandwidth(device: str, nbytes: int) -> float:
    """Bytes per second a device-to-device copy moves (read + write), the best of 5."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(6):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def step_bytes(shape: str, dtype: torch.dtype, k: int) -> int:
    """Weight bytes one decode step reads at batch 1 with the last k attention blocks skipped."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hopscotch.bench.choices import RANDOM_SHAPES

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**RANDOM_SHAPES[shape]))
    size = torch.finfo(dtype).bits // 8
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight
    attn = sum(p.numel() for p in model.model.layers[0].self_attn.parameters())
    return size * (total - emb.numel() + emb.shape[1] - k * attn)


def _decode_rows(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r["phase"] == "decode"]


def targets(rows: list[dict], shape: str, device: str, dtype: torch.dtype, bandwidth: float) -> list[tuple]:
    """(name, passed, detail) per target; passed None when there were no rows to judge."""
    from hopscotch.bench.e2e import attention_gain

    tps: dict[tuple, float] = {}  # (provider, k, batch, context) -> tokens/s, the last run of a cell
    for r in rows:
        tps[(r["provider"], int(r["k"]), int(r["batch"]), int(r["context"]))] = float(r["tokens_per_s"])
    cells = sorted({(b, c) for (_, _, b, c) in tps})

    def patched(k, b, c):
        vals = [tps.get((p, k, b, c)) for p in ("hopscotch", "hopscotch_compiled")]
        return max((v for v in vals if v is not None), default=None)

    ratios = [(f"batch {b}, context {c}", patched(0, b, c) / tps[("hf", 0, b, c)]) for b, c in cells
              if ("hf", 0, b, c) in tps and patched(0, b, c)]
    shares = []
    for r in rows:
        if int(r["batch"]) != 1 or r["provider"] not in ("hopscotch", "hopscotch_compiled"):
            continue
        k, ctx = int(r["k"]), int(r["context"])
        if patched(k, 1, ctx) != float(r["tokens_per_s"]):
            continue  # the faster patched provider of the cell only
        kv = float(r["kv_cache_bytes"] or 0) * (ctx + int(r["tokens"]) / 2) / (ctx + int(r["tokens"]))
        floor_ms = (step_bytes(shape, dtype, k) + kv) / bandwidth * 1e3
        shares.append((f"k = {k}, context {ctx}", floor_ms / float(r["ms_per_token"])))
    gains = []
    by_ctx = defaultdict(list)
    for r in rows:
        by_ctx[int(r["context"])].append({"phase": "decode", "provider": r["provider"], "batch": int(r["batch"]),
                                          "k": int(r["k"]), "ms_median": float(r["ms_median"])})
    layers = {int(r["model_layers"]) for r in rows if r.get("model_layers")}
    for ctx, part in by_ctx.items():
        for g in attention_gain(part, max(layers, default=0)):
            if g["k"] == IDEAL_K and g["gain_vs_ideal"] != "":
                gains.append((f"batch {g['batch']}, context {ctx}", g["gain_vs_ideal"]))
    return [_judge("speed-vs-hf", ratios, SPEED_VS_HF, "x{:.2f}", "no cells with HF and the patched model"),
            _judge("bandwidth-b1", shares, BANDWIDTH_SHARE, "{:.0%} of the floor", "no batch-1 rows",
                   f"; measured copy bandwidth {bandwidth / 1e9:.0f} GB/s"),
            _judge(f"k{IDEAL_K}-vs-ideal", gains, IDEAL_SHARE, "{:.0%} of the ideal saving",
                   f"no k = {IDEAL_K} and k = L rows")]


def _judge(name: str, values: list[tuple[str, float]], target: float, fmt: str, empty: str, note: str = "") -> tuple:
    """(name, passed or None when there is nothing to judge, detail naming the worst cell)."""
    if not values:
        return name, None, empty + note
    where, worst = min(values, key=lambda v: v[1])
    return (name, all(v >= target for _, v in values),
            f"min {fmt.format(worst)} at {where} (target >= {fmt.format(target)}, {len(values)} cells{note})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("steps")
    p.add_argument("decode_csv")
    p.add_argument("--shape", default="llama3-8b")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--device", default="cuda")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    lines = []
    failed = False
    with open(args.steps) as f:
        for line in f:
            parts = line.split(None, 2)
            if len(parts) < 2:
                continue
            name, status, rest = parts[0], parts[1], parts[2].strip() if len(parts) > 2 else ""
            verdict = {"ok": "PASS", "FAIL": "FAIL", "skip": "SKIP"}.get(status, "FAIL")
            failed |= verdict == "FAIL"
            lines.append((name, verdict, rest))
    try:
        rows = _decode_rows(args.decode_csv)
        bandwidth = copy_bandwidth(args.device, (1 << 30) if args.device == "cuda" else (64 << 20))
        judged = targets(rows, args.shape, args.device, getattr(torch, args.dtype), bandwidth)
    except (OSError, KeyError, ValueError) as exc:
        judged = [("decode-targets", False, f"cannot judge: {type(exc).__name__}: {exc}")]
    for name, passed, detail in judged:
        if args.report_only:
            verdict = "INFO"
        else:
            verdict = "SKIP" if passed is None else "PASS" if passed else "FAIL"
            failed |= verdict == "FAIL" or passed is None  # a target with nothing to judge is not a pass
            verdict = "FAIL" if passed is None else verdict
        lines.append((name, verdict, detail))
    print(f"{'check':<16}{'verdict':<9}detail")
    for name, verdict, detail in lines:
        print(f"{name:<16}{verdict:<9}{detail}")
    print(f"VERDICT: {'FAIL' if failed else 'PASS'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
