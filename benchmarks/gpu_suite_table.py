"""The short tables gpu_suite.sh prints last: decode tokens/s per (context, batch), each provider and k as a ratio
to HF eager measured in the same run; with --mlp, the fused decode MLP op against F.linear + silu * up per token
count (benchmarks/bench_ops.py's rows).

    python benchmarks/gpu_suite_table.py benchmarks/results/gpu_suite/<device>/decode.csv
    python benchmarks/gpu_suite_table.py --mlp benchmarks/results/gpu_suite/<device>/mlp.csv
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict


def table(path: str) -> str:
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["phase"] == "decode"]
    if not rows:
        return f"{path}: no decode rows"
    cells: dict[tuple[int, int], dict[str, float]] = defaultdict(dict)
    for r in rows:  # the last run of a cell wins (the CSV appends)
        name = "hf" if r["provider"] == "hf" else f"{r['provider'].replace('hopscotch', 'hs')} k={r['k']}"
        cells[(int(r["context"]), int(r["batch"]))][name] = float(r["tokens_per_s"])
    names = sorted({n for c in cells.values() for n in c if n != "hf"},
                   key=lambda n: (n.split(" ")[0], int(n.split("=")[1])))
    head = f"{'ctx':>6} {'batch':>5} {'hf tok/s':>9} " + " ".join(f"{n:>17}" for n in names)
    lines = [f"device: {rows[-1].get('device', '?')}", head, "-" * len(head)]
    for (ctx, batch), c in sorted(cells.items()):
        hf = c.get("hf")
        vals = []
        for n in names:
            v = c.get(n)
            vals.append(f"{'-':>17}" if v is None else f"{v:>9.1f} ({v / hf:4.2f}x)" if hf else f"{v:>17.1f}")
        lines.append(f"{ctx:>6} {batch:>5} {hf or 0:>9.1f} " + " ".join(vals))
    return "\n".join(lines)


def mlp_table(path: str) -> str:
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["provider"] == "hopscotch"]
    except OSError as exc:
        return f"{path}: no rows ({exc.strerror})"
    return "\n".join(f"  {r['dtype']:<9} hidden {r['hidden']:>5} tokens {r['tokens']:>3}: "
                     f"{float(r['ms_median']) * 1e3:8.1f} us, x{float(r['speedup_vs_eager_ref']):.2f} of "
                     f"F.linear + silu * up, {float(r['gbs']):.0f} GB/s" for r in rows) or f"{path}: no rows"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--mlp":
        print(mlp_table(sys.argv[2]))
    elif len(sys.argv) == 2:
        print(table(sys.argv[1]))
    else:
        sys.exit("usage: python benchmarks/gpu_suite_table.py [--mlp] CSV")
