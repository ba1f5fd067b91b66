"""The both-orders study's tables (experiments/both_orders.py): per task and k, every row with its 95% intervals,
weight bytes, decode speed and paired tests; and the two orders head to head. Computes nothing but the paired
tests, so it runs on an unfinished study."""

from __future__ import annotations

import csv
from pathlib import Path

from study_report import _p, value_cell

ORDER = ("original", "quantized", "hopscotch", "quantize-search", "search-quantize", "llm-drop-q")
LABELS = {"original": "original (float32)", "quantized": "quantized", "hopscotch": "Hopscotch (float32)",
          "quantize-search": "quantize -> search", "search-quantize": "search -> quantize",
          "llm-drop-q": "LLM-Drop, quantized"}
METRICS = ("eval_loss", "acc", "wiki_ppl")


def _keys(rows, task, k):
    out = {}
    for name in ORDER:
        key = f"{name}|{task}|{0 if name in ('original', 'quantized') else k}"
        if key in rows:
            out[name] = key
    return out


def task_table(rows, speeds, paired, task, k) -> str:
    keys = _keys(rows, task, k)
    lines = ["| row | skipped | weights MB | decode tok/s | held-out loss | accuracy | Wikipedia ppl | "
             "p vs original: acc | p vs quantize -> search: loss / acc / ppl |", "|---" * 9 + "|"]
    ref = keys.get("quantize-search")
    for name, key in keys.items():
        r = rows[key]
        p_orig = _p(paired(keys["original"], key)["acc"]) if "original" in keys and name != "original" else "-"
        if ref and key != ref:
            c = paired(ref, key)
            p_ref = " / ".join(_p(c.get(m)) for m in METRICS)
        else:
            p_ref = "-"
        speed = f"{speeds[key]:.1f}" if key in speeds else "-"
        lines.append(f"| {LABELS[name]} | {' '.join(map(str, r['skipped'])) or '-'} | "
                     f"{r['weight_bytes'] / 2**20:.0f} | {speed} | {value_cell(r, 'eval_loss')} | "
                     f"{value_cell(r, 'acc')} | {value_cell(r, 'wiki_ppl', 2)} | {p_orig} | {p_ref} |")
    return "\n".join(lines)


def orders_table(rows, paired, tasks, ks) -> str:
    """quantize -> search minus search -> quantize, per task and k: the difference with its 95% interval and p."""
    lines = ["| task | k | held-out loss, q->s minus s->q | accuracy, q->s minus s->q | "
             "Wikipedia NLL/token, q->s minus s->q |", "|---|---|---|---|---|"]
    for task in tasks:
        for k in ks:
            a, b = f"search-quantize|{task}|{k}", f"quantize-search|{task}|{k}"
            if a not in rows or b not in rows:
                continue
            c = paired(a, b)
            cells = []
            for m in METRICS:
                d = c[m]["diff"]
                cells.append(f"{d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}], p {_p(c[m])}")
            lines.append(f"| {task} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_tables(rows, speeds, paired, tasks, ks, args, meta) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "both_orders" if args.scheme == "int8" else f"both_orders_{args.scheme}"
    parts = [f"# Hopscotch and quantization, both orders (SmolLM2-135M-Instruct, torchao {args.scheme} weight-only)",
             "", f"Made by `python experiments/both_orders.py --ks {','.join(map(str, ks))} --scheme {args.scheme} "
             f"--evaluation {args.evaluation} --wiki-blocks {args.wiki_blocks}` "
             f"(calibration {args.calibration} items, evaluation {args.evaluation} items per task, "
             f"{args.wiki_blocks} Wikipedia blocks of 256 tokens). Intervals: 95% percentile bootstrap over items. "
             "p: paired tests on the same items (paired bootstrap for losses, exact McNemar for accuracy). "
             "Weights MB: what a thin export keeps (skipped attention blocks dropped). Decode: 1 thread, "
             "128-token prompt, 32 new tokens, every row patched, median of interleaved rounds on a shared "
             "2-core machine.", "", "Machine: " + ", ".join(f"{k} {v}" for k, v in meta.items() if v), "",
             "## quantize -> search against search -> quantize (negative loss / NLL: quantize -> search is better)",
             "", orders_table(rows, paired, tasks, ks)]
    for task in tasks:
        for k in ks:
            if f"quantize-search|{task}|{k}" in rows or f"original|{task}|0" in rows:
                parts += ["", f"## {task}, k = {k}", "", task_table(rows, speeds, paired, task, k)]
    (out / f"{stem}.md").write_text("\n".join(parts) + "\n")
    fields = ["row", "task", "k", "skipped", "weight_bytes", "decode_tok_s"]
    for m in METRICS:
        fields += [m, f"{m}_low", f"{m}_high"]
    fields += ["eval_n", "search_s", "eval_seconds", *meta]
    with (out / f"{stem}.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for key in sorted(rows, key=lambda x: (rows[x]["task"], rows[x]["k"], ORDER.index(rows[x]["row"]))):
            r = rows[key]
            flat = {**r, **meta, "skipped": " ".join(map(str, r["skipped"])), "decode_tok_s": speeds.get(key)}
            for m in METRICS:
                ci = r.get("ci", {}).get(m)
                if ci:
                    flat[f"{m}_low"], flat[f"{m}_high"] = ci["low"], ci["high"]
            w.writerow(flat)
    print(f"wrote {out / stem}.md and .csv")
    print((out / f"{stem}.md").read_text())
