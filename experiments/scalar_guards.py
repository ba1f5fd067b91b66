"""Scalars that fit the task without costing everything else: the guards of hopscotch/search/guards.py compared.

The blocks stay fixed at each task's faithful Hopscotch plan (fold 0, k = 4 and k = 8, from the quality study);
only the final scalars are retrained, under each guard, with the plan's own hyperparameters and seed. Each
retrained plan is evaluated like the study's rows (held-out task loss, accuracy, Wikipedia perplexity, 95%
intervals) and compared by paired tests on the same items with the paper's training (the study's faithful row)
and with iterative LLM-Drop (its row at the same k). Rows go to <work>/scalar_guards.jsonl (resumable), the table
to <out>/scalar_guards.txt and .csv.

    python experiments/scalar_guards.py --ks 4            # 10-15 min per row on 2 quiet cores (9 variants per task)
    python experiments/scalar_guards.py --report          # the table from the rows finished so far
    python experiments/scalar_guards.py --search generic1.5 --ks 4   # a whole fast search per task, the default guard

With --search VARIANT, each task gets one whole search (hopscotch-fast, the package's default method, fold 0) with
the variant's guard on its final training, beside the study's hopscotch-fast row made with the paper's training:
do the picks change, and what does the plan cost?
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_study import TASKS, Study, parse_args as study_args  # noqa: E402
from study_report import paired_p_cells, value_cell  # noqa: E402

from hopscotch import SkipPlan, unpatch_model  # noqa: E402
from common import PAPER, RESULTS_DIR  # noqa: E402  (first: results go to experiments/results)
from hopscotch.bench.results import metadata  # noqa: E402
from rows import append_row, read_rows  # noqa: E402
from hopscotch.patch.patcher import get_scalars  # noqa: E402
from hopscotch.search import SearchConfig, search  # noqa: E402
from hopscotch.search.train import train_final_scalars  # noqa: E402

# name -> (guard, final batch size or None for the plan's); "paper" is the plan's own training, retrained. Each
# variant turns one guard on over the paper's training (PAPER: every guard off).
VARIANTS = {
    "paper": (PAPER, None),
    "generic0.5": (replace(PAPER, generic_weight=0.5), None),
    "generic1": (replace(PAPER, generic_weight=1.0), None),
    "generic1.5": (replace(PAPER, generic_weight=1.5), None),
    "generic2": (replace(PAPER, generic_weight=2.0), None),
    "pull0.03": (replace(PAPER, pull=0.03), None),
    "pull0.3": (replace(PAPER, pull=0.3), None),
    "holdout0.25": (replace(PAPER, holdout=0.25), None),
    "batch4": (PAPER, 4),  # the final batch size before 2026-12-01: the calibration batch size
}
# Rows of the generic guard's first scheme, kept in the table (the code no longer makes them): each step added a
# whole generic batch (4 x 256 tokens), which would have made the final training ~13x the paper's and broken the
# fast search's budget; the scheme now takes a stretch as long as the step's task batch (guards.GenericText).
EARLIER = ("generic0.5-whole", "generic1-whole", "generic2-whole")
METRICS = ("eval_loss", "acc", "wiki_ppl")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--ks", default="4,8")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--work", default=str(RESULTS_DIR / "study_work"), help="the quality study's work folder")
    p.add_argument("--out", default=str(RESULTS_DIR))
    p.add_argument("--report", action="store_true", help="write the table from the finished rows; run nothing")
    p.add_argument("--search", metavar="VARIANT", choices=tuple(VARIANTS), default=None,
                   help="instead of retraining fixed blocks, run one whole hopscotch-fast search per task with "
                   "this variant's guard")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def _choices(text: str, allowed, name: str) -> list:
    values = [x for x in text.split(",") if x]
    bad = [x for x in values if x not in allowed]
    if bad or not values:
        sys.exit(f"--{name} {text!r}: expected some of {', '.join(map(str, allowed))}")
    return values


def main(argv=None) -> int:
    args = parse_args(argv)
    tasks = _choices(args.tasks, TASKS, "tasks")
    ks = [int(k) for k in _choices(args.ks, ("1", "2", "4", "6", "8"), "ks")]
    variants = _choices(args.variants, VARIANTS, "variants")
    flags = ["--work", args.work, "--out", args.out] + (["--quiet"] if args.quiet else [])
    study = Study(study_args(flags + (["--report"] if args.report else [])))
    work = Path(args.work)
    rows_path = work / "scalar_guards.jsonl"
    rows = read_rows(rows_path, lambda r: r["key"])
    if not args.report:
        for k in ks:
            for task in tasks:
                if args.search:
                    key = f"search|{task}|{args.search}|{k}"
                    if key not in rows:
                        rows[key] = run_search(study, work, key, task, k, args.search, args.quiet)
                        append_row(rows_path, rows[key])
                    continue
                for variant in variants:
                    key = f"guard|{task}|{variant}|{k}"
                    if key not in rows:
                        rows[key] = run_one(study, work, key, task, k, variant, args.quiet)
                        append_row(rows_path, rows[key])
    write(study, rows, tasks, ks, Path(args.out))
    return 0


def run_one(study, work: Path, key: str, task: str, k: int, variant: str, quiet: bool) -> dict:
    hop = SkipPlan.load(work / "plans" / f"{task}_f0_hopscotch_k{k}.json")
    hp, seed = hop.provenance["hyperparameters"], hop.provenance["seed"]
    guard, batch_size = VARIANTS[variant]
    data = study.task_data(task)
    model = study.model
    unpatch_model(model)
    info: dict = {}
    config = SearchConfig(objective=data.objective, final_epochs=hp["final_epochs"], final_lr=hp["final_lr"],
                          final_batch_size=batch_size or hp["final_batch_size"], seed=seed, guard=guard)
    losses = train_final_scalars(model, data.calibration, hop.skipped_attention, config,
                                 generic=data.text_calibration, info=info, progress=not quiet)
    scalars = get_scalars(model).clone()
    plan = SkipPlan.for_model(model, hop.skipped_attention, (), scalars, method=f"hopscotch, final scalars {variant}",
                              guard=guard.as_dict(), final_batch_size=batch_size or hp["final_batch_size"],
                              final_losses=losses)
    plan.save(work / "plans" / f"{task}_f0_guard-{variant}_k{k}.json")
    same_as_plan = bool((scalars - hop.scalar_tensor()).abs().max() == 0)
    row = {"key": key, "kind": "guard", "variant": variant, "k": k, "calib": task, "fold": 0, "eval": task,
           "skipped": plan.skipped_attention, "guard": guard.as_dict(), "final_batch_size": plan.provenance[
               "final_batch_size"], "final_losses": losses, "holdout": {k2: v for k2, v in info.items()
                                                                        if k2 != "guard"},
           "max_scalar_move": float((scalars - 1).abs().max()), "same_scalars_as_plan": same_as_plan,
           **study.evaluate(key, task, plan)}
    print({k2: row[k2] for k2 in ("key", "eval_loss", "acc", "wiki_ppl", "same_scalars_as_plan")}, flush=True)
    return row


def run_search(study, work: Path, key: str, task: str, k: int, variant: str, quiet: bool) -> dict:
    """One whole hopscotch-fast search (the study's settings, fold 0) with the variant's guard."""
    guard, batch_size = VARIANTS[variant]
    a, data, model = study.args, study.task_data(task), study.model
    unpatch_model(model)
    settings = dict(guard=guard) if batch_size is None else dict(guard=guard, final_batch_size=batch_size)
    t0 = time.perf_counter()
    plan = search(model, data.calibration, num_skip=k, objective=data.objective, seed=0, method="hopscotch-fast",
                  final_epochs=a.final_epochs, similarity_batches=data.text_calibration,
                  generic_batches=data.text_calibration, data_info=data.info, progress=not quiet,
                  state_path=work / f"{task}_f0_hopscotch-fast_guard-{variant}.state.json", **settings)
    seconds = round(time.perf_counter() - t0, 1)
    plan.save(work / "plans" / f"{task}_f0_hopscotch-fast_guard-{variant}_k{k}.json")
    fast = study.rows.get(f"main|{task}|0|hopscotch-fast|{k}", {})
    row = {"key": key, "kind": "search", "variant": variant, "k": k, "calib": task, "fold": 0, "eval": task,
           "skipped": plan.skipped_attention, "same_blocks_as_fast": plan.skipped_attention == fast.get("skipped"),
           "guard": guard.as_dict(), "search_seconds": plan.provenance.get("search_seconds", seconds),
           "token_passes": (plan.provenance.get("token_passes") or {}).get("total", 0),
           **study.evaluate(key, task, plan)}
    print({k2: row[k2] for k2 in ("key", "skipped", "same_blocks_as_fast", "eval_loss", "acc", "wiki_ppl")},
          flush=True)
    return row


def write(study, rows: dict, tasks, ks, out: Path) -> None:
    for key, r in rows.items():
        study.rows.setdefault(key, r)

    def pv(c):
        p = c["p_value"]
        return "<0.001" if p < 0.001 else f"{p:.3f}" if p < 0.01 else f"{p:.2f}"

    lines = ["Guards on the final scalars: each task's faithful Hopscotch blocks (fold 0), the final scalars retrained "
             "under each guard. Made by `python experiments/scalar_guards.py`.",
             "Intervals: 95% percentile bootstrap over items; p: paired tests on the same items (bootstrap for the "
             "loss and perplexity, exact McNemar for accuracy). 'paper' is today's training retrained (its scalars "
             "equal the plan's where marked =). lead kept: (LLM-Drop's loss - this loss) / (LLM-Drop's loss - "
             "paper's loss). 'fast search': the study's hopscotch-fast plan (the paper's training); 'fast V': a "
             "whole hopscotch-fast search with guard V (--search V). 'genericW': the generic guard as the package "
             "has it (each step adds a stretch of generic text as long as its task batch); 'genericW-whole': its "
             "first scheme (each step added a whole generic batch of 4 x 256 tokens, ~13x the final training's "
             "work), kept for the record.",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in metadata("cpu").items() if v), ""]
    head = (f"{'task':10} {'k':>2} {'scalars':17} {'held-out loss':24} {'accuracy':22} {'Wikipedia ppl':22} "
            f"{'lead kept':>9}  p vs paper (loss/acc/ppl)    p vs llm-drop-it (loss/acc/ppl)")
    lines.append(head)
    table = []
    for k in ks:
        for task in tasks:
            paper, drop = f"main|{task}|0|hopscotch|{k}", f"main|{task}|0|llm-drop-iterative|{k}"
            named = [("llm-drop-it", drop), ("paper (plan)", paper)] + \
                    [(v, f"guard|{task}|{v}|{k}") for v in (*VARIANTS, *EARLIER)] + \
                    [("fast search", f"main|{task}|0|hopscotch-fast|{k}")] + \
                    [(f"fast {v}", f"search|{task}|{v}|{k}") for v in VARIANTS]
            for name, key in named:
                r = study.rows.get(key)
                if r is None:
                    continue
                ps = paired_p_cells(study.rows, study.paired, key, (paper, drop), pv, METRICS)
                lead = ""
                if paper in study.rows and drop in study.rows and key != drop:
                    gap = study.rows[drop]["eval_loss"] - study.rows[paper]["eval_loss"]
                    lead = f"{(study.rows[drop]['eval_loss'] - r['eval_loss']) / gap:.2f}" if gap > 0 else ""
                mark = "=" if r.get("same_scalars_as_plan") else ""
                lines.append(f"{task:10} {k:>2} {name + mark:17} {value_cell(r, 'eval_loss'):24} "
                             f"{value_cell(r, 'acc'):22} {value_cell(r, 'wiki_ppl', 2):22} {lead:>9}  {ps[0]:28} {ps[1]}")
                table.append({"task": task, "k": k, "scalars": name, "same_scalars_as_plan": bool(mark),
                              **{m: r[m] for m in METRICS},
                              **{f"{m}_{b}": r["ci"][m][b] for m in METRICS for b in ("low", "high")},
                              "lead_kept": lead, "p_vs_paper": ps[0], "p_vs_llm_drop_it": ps[1]})
            lines.append("")
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "scalar_guards.txt").write_text(text)
    if table:
        with (out / "scalar_guards.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(table[0]))
            w.writeheader()
            w.writerows(table)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
