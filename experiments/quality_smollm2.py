"""The results table: which blocks each method skips on SmolLM2-135M, and what that costs in quality.

    python experiments/quality_smollm2.py                      # the committed table (hours on 2 CPU cores)
    python experiments/quality_smollm2.py --ks 0,1,2 --calibration 16 --evaluation 40   # a quick look

Calibrates on a task split (default ARC-Easy, self-distillation targets, as the Hopscotch paper) and evaluates on
the disjoint split: held-out loss (NLL of the original model's answers to the evaluation prompts), 0-shot
accuracy (rc format), and Wikipedia perplexity. Every method is run to the largest k once (greedy searches are
prefix-consistent: the first k picks of a search to 8 are the search to k; each k gets its own final scalars).
Search states and finished rows are kept under --work, so an interrupted run continues where it stopped.
Every figure has its 95% bootstrap interval over items (the *_low / *_high columns). LLM-Drop scores packed
Wikipedia text (the library default; its paper scores C4). The three-task study with seeds, transfer and paired
tests is experiments/quality_study.py.
Writes experiments/results/quality_smollm2.csv (+ .png) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from hopscotch import unpatch_model
from common import PAPER, RESULTS_DIR  # noqa: E402  (first: results go to experiments/results)
from hopscotch.bench.results import metadata
from rows import append_row, read_rows
from hopscotch.models import load_model
from hopscotch.search import search
from hopscotch.tasks import evaluate_task, prepare_task

METHODS = {  # label -> search() arguments (the slow faithful search last, so the others are in early)
    "hopscotch-fast": dict(method="hopscotch-fast", guard=PAPER),
    "llm-drop": dict(method="llm-drop", target="attn", iterative=False),
    "llm-drop-iterative": dict(method="llm-drop", target="attn", iterative=True),
    "random": dict(method="random"),
    "hopscotch": dict(method="hopscotch", guard=PAPER),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="arc_easy", help="packaged task to calibrate on and evaluate (default arc_easy)")
    p.add_argument("--ks", default="0,1,2,4,6,8", help="numbers of skipped attention blocks")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--calibration", type=int, default=64, help="calibration items")
    p.add_argument("--evaluation", type=int, default=200, help="evaluation items (disjoint from calibration)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--final-epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=str(RESULTS_DIR / "quality_work"), help="search states and finished rows")
    p.add_argument("--out", default=str(RESULTS_DIR / "quality_smollm2.csv"))
    p.add_argument("--quiet", action="store_true", help="no progress bars (for logs)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    ks = sorted({int(k) for k in args.ks.split(",")})
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        sys.exit(f"unknown methods {unknown}; expected some of {', '.join(METHODS)}")
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows_path = work / "rows.jsonl"
    done = read_rows(rows_path, lambda r: (r["method"], r["k"]))
    model, tok = load_model(None)
    data = prepare_task(model, tok, args.task, calibration=args.calibration, evaluation=args.evaluation,
                        seed=args.seed, batch_size=args.batch_size)
    print(f"calibration: {len(data.calibration)} batches, "
          f"{sum(int(b['attention_mask'].sum()) for b in data.calibration)} tokens; {data.info}", flush=True)

    def record(row):
        done[(row["method"], row["k"])] = row
        append_row(rows_path, row)

    if ("original", 0) not in done:
        record({"method": "original", "k": 0, "skipped": [], **evaluate_task(model, tok, data)})
    for label in methods:
        for k in ks:
            if k == 0 or (label, k) in done:
                continue
            kw = dict(METHODS[label])
            state = work / f"{label}.state.json" if kw["method"].startswith("hopscotch") else None
            plan = search(model, data.calibration, num_skip=k, objective=data.objective, seed=args.seed,
                          final_epochs=args.final_epochs, state_path=state, data_info=data.info,
                          similarity_batches=data.text_calibration, progress=not args.quiet, **kw)
            prov = plan.provenance
            row = {"method": label, "k": k, "skipped": plan.skipped_attention,
                   **evaluate_task(model, tok, data),
                   "search_seconds": prov.get("search_seconds", prov.get("wall_seconds")),
                   "token_passes": (prov.get("token_passes") or {}).get("total", 0),
                   "final_train_loss": (prov.get("final_losses") or [None])[-1]}
            plan.save(work / "plans" / f"{label}_k{k}.json")
            record(row)
            unpatch_model(model)
            print(json.dumps(row), flush=True)
    rows = [done[key] for key in sorted(done, key=lambda x: (x[0] != "original", x[0], x[1]))]
    write_outputs(rows, Path(args.out), args)
    return 0


def write_outputs(rows, out: Path, args) -> None:
    import csv

    meta = metadata("cpu")
    meta.update({"task": args.task, "calibration_items": args.calibration, "evaluation_items": args.evaluation,
                 "seed": args.seed})
    metrics = ["eval_loss", "acc", "acc_norm", "wiki_ppl"]
    fields = ["method", "k", "skipped", *[f for m in metrics for f in (m, f"{m}_low", f"{m}_high")],
              "search_seconds", "token_passes", "final_train_loss", *meta]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            cis = {f"{m}_{end}": r["ci"][m][end] for m in metrics if m in r.get("ci", {}) for end in ("low", "high")}
            w.writerow({**r, **cis, "skipped": " ".join(map(str, r["skipped"])), **meta})
    print(f"wrote {out}")
    print(format_table(rows))
    agreement = fast_vs_faithful(rows)
    if agreement:
        print(agreement)
        out.with_name(out.stem + "_fast_vs_faithful.txt").write_text(agreement + "\n")
    plot(rows, out.with_suffix(".png"), args)


def format_table(rows) -> str:
    head = f"{'method':<20}{'k':>3}  {'eval loss':>9} {'acc':>6} {'acc_n':>6} {'wiki ppl':>9} {'search s':>9} " \
           f"{'token-passes':>13}  skipped"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['method']:<20}{r['k']:>3}  {r.get('eval_loss', float('nan')):>9.4f} "
                     f"{r.get('acc', float('nan')):>6.3f} {r.get('acc_norm', float('nan')):>6.3f} "
                     f"{r.get('wiki_ppl', float('nan')):>9.2f} {r.get('search_seconds', 0) or 0:>9.0f} "
                     f"{r.get('token_passes', 0) or 0:>13,}  {r['skipped']}")
    return "\n".join(lines)


def fast_vs_faithful(rows) -> str:
    """Per k: the blocks each picked, their final calibration loss, and the token-pass ratio."""
    by = {(r["method"], r["k"]): r for r in rows}
    ks = sorted(k for (m, k) in by if m == "hopscotch" and ("hopscotch-fast", k) in by)
    if not ks:
        return ""
    lines = ["fast vs faithful (same k): picks, final calibration loss, token-passes faithful / fast",
             f"{'k':>3}  {'same blocks':<12}{'faithful loss':>14}{'fast loss':>11}{'loss diff':>10}{'passes x':>10}"]
    for k in ks:
        a, b = by[("hopscotch", k)], by[("hopscotch-fast", k)]
        same = sorted(a["skipped"]) == sorted(b["skipped"])
        la, lb = a.get("final_train_loss"), b.get("final_train_loss")
        diff = f"{100 * (lb - la) / la:+.2f}%" if la and lb else "-"
        ratio = a["token_passes"] / b["token_passes"] if b.get("token_passes") else float("nan")
        lines.append(f"{k:>3}  {str(same):<12}{la or float('nan'):>14.4f}{lb or float('nan'):>11.4f}{diff:>10}"
                     f"{ratio:>10.1f}")
    return "\n".join(lines)


def plot(rows, path: Path, args) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    base = next((r for r in rows if r["method"] == "original"), None)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, key, label in zip(axes, ("eval_loss", "acc", "wiki_ppl"),
                              ("held-out loss (NLL of the original model's answers)", "accuracy (0-shot, rc)",
                               "Wikipedia perplexity")):
        for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "original"):
            pts = sorted((r["k"], r[key]) for r in rows if r["method"] == method and key in r)
            if base is not None:
                pts = [(0, base[key])] + pts
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        ax.set_xlabel("attention blocks skipped (of 30)")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        if key == "wiki_ppl":
            ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"SmolLM2-135M-Instruct, calibrated on {args.task} ({args.calibration} items), "
                 f"evaluated on {args.evaluation} disjoint items", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
