"""How Hopscotch's training budget changes the plan it finds and what it costs (issue 15, item 0).

    python experiments/search_budget.py                 # SmolLM2-135M-Instruct, arc_easy, k = 4, ~1 h on 2 cores
    python experiments/search_budget.py --configs "n128-b4-e1:3"   # 4x the items (not run; the token-passes of n32-b4-e4)

The paper trains every candidate one epoch over GSM8K at batch 32 (~234 Adam steps) and the final scalars 10
epochs; the package's first defaults (32 items, batch 4, one epoch) gave 8 steps. Adam moves a scalar by at most
about lr per step, so 8 steps at lr 1e-2 can move a scalar by ~0.08 at most: the budget, not the data, bounds
the adaptation a candidate is scored with. This script separates the two levers at k blocks on one task:

  ``nN-bB-eE:F,..``  N calibration items, batch size B, E epochs per candidate (N*E/B Adam steps per candidate,
                     N*E items' worth of token-passes), then the final scalars trained F epochs (each F listed)
                     at the same batch size B (the search's ``final_batch_size=None``)

Each configuration runs the fast search (``hopscotch-fast``, the default method; its candidates are trained
exactly as the faithful search trains them) to k blocks, then trains the final scalars for each F and evaluates
the plan on ``--evaluation`` disjoint items of the task (held-out loss of the original model's answers with a
95% bootstrap interval, accuracy with its interval, a paired test against the first configuration).
Calibration sets are nested (the 32 items of n32 are the first 32 of n128) and every configuration is evaluated
on the same items. Resumable: rows and search states live under ``--work``.
Writes <out>/search_budget.csv and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import torch

from hopscotch import SkipPlan, apply_plan, unpatch_model
from common import PAPER, RESULTS_DIR  # noqa: E402  (first: results go to experiments/results)
from hopscotch.bench.results import metadata
from rows import append_row, read_rows
from hopscotch.models import load_model
from hopscotch.patch.patcher import get_scalars
from hopscotch.search import SearchConfig, search
from hopscotch.search.state import read_steps
from hopscotch.search.train import PassCounter, rebatch, train_final_scalars
from hopscotch.tasks import compare_results, evaluate_task, prepare_task

DEFAULT_CONFIGS = "n32-b4-e1:3,10;n32-b1-e1:3,10;n32-b4-e4:3"  # the configurations in results/search_budget.txt
_CONFIG = re.compile(r"^n(\d+)-b(\d+)-e(\d+):([\d,]+)$")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="arc_easy")
    p.add_argument("--k", type=int, default=4, help="attention blocks to skip (default 4)")
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"';'-separated nN-bB-eE:F,.. (default {DEFAULT_CONFIGS})")
    p.add_argument("--evaluation", type=int, default=200, help="held-out items (default 200)")
    p.add_argument("--method", default="hopscotch-fast")
    p.add_argument("--work", default=str(RESULTS_DIR / "budget_work"))
    p.add_argument("--out", default=str(RESULTS_DIR))
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.parsed = []
    for spec in args.configs.split(";"):
        m = _CONFIG.match(spec.strip())
        if not m:
            p.error(f"--configs entry {spec!r}: expected nN-bB-eE:F[,F..], e.g. n32-b4-e1:3,10")
        n, b, e, finals = int(m[1]), int(m[2]), int(m[3]), [int(f) for f in m[4].split(",")]
        args.parsed.append((spec.split(":")[0], n, b, e, finals))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    for sub in ("items", "plans"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    rows_path = work / "rows.jsonl"
    rows = read_rows(rows_path, lambda r: r["key"])
    wanted = ["original"] + [f"{label}-f{f}" for label, _, _, _, finals in args.parsed for f in finals]
    if all(k in rows for k in wanted):  # everything measured: only the outputs to write
        write(rows, args, work, out)
        return 0
    torch.manual_seed(0)
    model, tok = load_model(None)
    n_max = max(n for _, n, _, _, _ in args.parsed)
    t0 = time.perf_counter()
    data = prepare_task(model, tok, args.task, calibration=n_max, evaluation=args.evaluation, batch_size=1,
                        wiki_blocks=0, text_blocks=0, progress=not args.quiet)
    print(f"targets for {n_max} calibration and {len(data.eval_items)} evaluation items: "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def evaluate(key):
        ev = evaluate_task(model, tok, dataclasses.replace(data, calibration=[]), keep_items=True, resamples=2000)
        (work / "items" / f"{key}.json").write_text(json.dumps(ev.pop("items")))
        return ev

    if "original" not in rows:
        unpatch_model(model)
        rows["original"] = {"key": "original", **evaluate("original")}
        append_row(rows_path, rows["original"])
    for label, n, b, e, finals in args.parsed:
        # one row per batch, in split order: the first n rows are the n-item calibration set
        batches = rebatch(data.calibration[:n], b, pad_id=pad)
        for f_epochs in finals:
            key = f"{label}-f{f_epochs}"
            if key in rows:
                continue
            unpatch_model(model)
            t1 = time.perf_counter()
            plan = search(model, batches, method=args.method, num_skip=args.k, objective=data.objective, seed=0,
                          candidate_epochs=e, final_epochs=3, final_batch_size=0, guard=PAPER, state_path=work / f"{label}.state.json",
                          data_info=data.info, progress=not args.quiet)
            prov = plan.provenance
            search_passes = prov["token_passes"]["total"]
            final_seconds = next(s["seconds"] for s in read_steps(work / f"{label}.state.json")
                                 if s["name"] == f"final/k{args.k}")
            final_passes = None
            if f_epochs != 3:  # train the final scalars again, for f_epochs, from 1
                work_done, t2 = PassCounter(), time.perf_counter()
                config = SearchConfig(objective=data.objective, final_epochs=f_epochs, final_lr=3e-3, seed=0,
                                      final_batch_size=0, guard=PAPER)
                train_final_scalars(model, batches, plan.skipped_attention, config, counter=work_done,
                                    progress=not args.quiet)
                final_seconds = round(time.perf_counter() - t2, 1)
                final_passes = round(work_done.total)
                plan = SkipPlan.for_model(model, plan.skipped_attention, (), get_scalars(model), **prov)
                apply_plan(model, plan)
            plan.save(work / "plans" / f"{key}.json")
            row = {"key": key, "config": label, "items": n, "batch_size": b, "candidate_epochs": e,
                   "adam_steps_per_candidate": e * -(-n // b), "final_epochs": f_epochs,
                   "skipped": plan.skipped_attention, "search_seconds": prov["search_seconds"],
                   "token_passes": search_passes if final_passes is None else search_passes + final_passes,
                   "final_seconds": final_seconds,
                   "max_scalar_move": float((plan.scalar_tensor() - 1).abs().max()),
                   "call_seconds": round(time.perf_counter() - t1, 1), **evaluate(key)}
            rows[key] = row
            append_row(rows_path, row)
            print(json.dumps({k: row[k] for k in ("key", "skipped", "eval_loss", "acc", "search_seconds",
                                                  "max_scalar_move")}), flush=True)
    write(rows, args, work, out)
    return 0


def write(rows, args, work: Path, out: Path) -> None:
    import csv

    keys = [f"{label}-f{f}" for label, _, _, _, finals in args.parsed for f in finals if f"{label}-f{f}" in rows]
    if not keys:
        return
    items = {k: json.loads((work / "items" / f"{k}.json").read_text()) for k in ["original", *keys]}
    ref = keys[0]
    meta = {**metadata("cpu"), "task": args.task, "k": args.k, "method": args.method}
    fields = ["config", "items", "batch_size", "candidate_epochs", "adam_steps_per_candidate", "final_epochs",
              "skipped", "eval_loss", "eval_loss_low", "eval_loss_high", "eval_loss_p_vs_first", "acc", "acc_low",
              "acc_high", "acc_p_vs_first", "max_scalar_move", "search_seconds", "final_seconds", "token_passes",
              *meta]
    lines = ["candidate steps / final steps: Adam steps per candidate / of the final scalars; p: paired test of the "
             f"held-out loss against {ref} (paired bootstrap)",
             f"{'config':<12}{'F':>3}{'steps':>12}  {'skipped':<16}{'held-out loss [95% CI]':>28}{'p':>7}"
             f"{'acc [95% CI]':>24}{'max|s-1|':>9}{'search s':>9}"]
    base = rows["original"]
    lines.append(f"{'original':<12}{'':>3}{'':>12}  {'':<16}{base['eval_loss']:>10.4f} [{base['ci']['eval_loss']['low']:.4f}, "
                 f"{base['ci']['eval_loss']['high']:.4f}]{'':>7}{base['acc']:>8.3f} [{base['ci']['acc']['low']:.3f}, "
                 f"{base['ci']['acc']['high']:.3f}]")
    out.mkdir(parents=True, exist_ok=True)
    with (out / "search_budget.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for k in keys:
            r = rows[k]
            flat = {**r, **meta, "skipped": " ".join(map(str, r["skipped"]))}
            for m in ("eval_loss", "acc"):
                flat[f"{m}_low"], flat[f"{m}_high"] = r["ci"][m]["low"], r["ci"][m]["high"]
            if k != ref:
                cmp = compare_results({**rows[ref], "items": items[ref]}, {**r, "items": items[k]})
                for m in ("eval_loss", "acc"):
                    flat[f"{m}_p_vs_first"] = round(cmp[m]["p_value"], 5)
            w.writerow(flat)
            final_steps = r["final_epochs"] * -(-r["items"] // r["batch_size"])
            steps = f"{r['adam_steps_per_candidate']} / {final_steps}"
            lines.append(f"{r['config']:<12}{r['final_epochs']:>3}{steps:>12}  "
                         f"{' '.join(map(str, r['skipped'])):<16}{r['eval_loss']:>10.4f} [{flat['eval_loss_low']:.4f}, "
                         f"{flat['eval_loss_high']:.4f}]{flat.get('eval_loss_p_vs_first', float('nan')):>7.3f}"
                         f"{r['acc']:>8.3f} [{flat['acc_low']:.3f}, {flat['acc_high']:.3f}]{r['max_scalar_move']:>9.3f}"
                         f"{r['search_seconds']:>9.0f}")
    text = "\n".join(lines)
    (out / "search_budget.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    sys.exit(main())
