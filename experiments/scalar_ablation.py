"""How much of Hopscotch's lead over LLM-Drop is the blocks it picks, and how much its learned scalars?

The quality study (quality_study.py) compares each method as its paper defines it: Hopscotch skips blocks *and*
trains four scalars per layer on the calibration answers; LLM-Drop only drops blocks. This script crosses the two
at k = 4, fold 0, on each task, with the study's data and cached evaluations:

- ``hopscotch, scalars at 1``: the faithful Hopscotch plan with every scalar reset to 1 (its blocks alone);
- ``llm-drop iterative + scalars``: iterative LLM-Drop's blocks with scalars trained exactly as Hopscotch trains its
  final scalars (same calibration rows at batch 1, same epochs, learning rate, seed and objective).

Each is compared (paired tests on the same items) with both methods as published. Rows go to
<work>/scalar_ablation.jsonl (resumable), the table to <out>/scalar_ablation.txt.

    python experiments/scalar_ablation.py            # about 35 min on 2 cores (two evaluations per task)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_study import TASKS, Study, parse_args as study_args  # noqa: E402
from study_report import paired_p_cells, value_cell  # noqa: E402

from hopscotch import SkipPlan, unpatch_model  # noqa: E402
from common import PAPER, RESULTS_DIR  # noqa: E402  (first: results go to experiments/results)
from hopscotch.bench.results import metadata  # noqa: E402
from rows import append_row, read_rows  # noqa: E402
from hopscotch.patch.patcher import get_scalars  # noqa: E402
from hopscotch.search import SearchConfig  # noqa: E402
from hopscotch.search.train import train_final_scalars  # noqa: E402

K = 4


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--work", default=str(RESULTS_DIR / "study_work"), help="the quality study's work folder")
    p.add_argument("--out", default=str(RESULTS_DIR))
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        sys.exit(f"--tasks {bad}: expected some of {', '.join(TASKS)}")
    study = Study(study_args(["--work", args.work, "--out", args.out] + (["--quiet"] if args.quiet else [])))
    work = Path(args.work)
    rows_path = work / "scalar_ablation.jsonl"
    rows = read_rows(rows_path, lambda r: r["key"])
    for task in tasks:
        hop = SkipPlan.load(work / "plans" / f"{task}_f0_hopscotch_k{K}.json")
        drop = SkipPlan.load(work / "plans" / f"{task}_f0_llm-drop-iterative_k{K}.json")
        for variant in ("hopscotch-scalars-1", "llm-drop-iterative+scalars"):
            key = f"ablation|{task}|{variant}|{K}"
            if key in rows:
                continue
            data = study.task_data(task)
            model = study.model
            unpatch_model(model)
            if variant == "hopscotch-scalars-1":
                plan = SkipPlan.for_model(model, hop.skipped_attention, method=variant, source=f"{task} hopscotch plan")
                train = None
            else:
                # Hopscotch's final-scalar recipe (the search's last step; it patches the model) on LLM-Drop's blocks
                hp = hop.provenance["hyperparameters"]
                config = SearchConfig(objective=data.objective, final_epochs=hp["final_epochs"],
                                      final_lr=hp["final_lr"], final_batch_size=hp["final_batch_size"],
                                      seed=hop.provenance["seed"], guard=PAPER)
                losses = train_final_scalars(model, data.calibration, drop.skipped_attention, config,
                                             progress=not args.quiet)
                plan = SkipPlan.for_model(model, drop.skipped_attention, (), get_scalars(model).clone(),
                                          method=variant, final_losses=losses)
                train = losses
            plan.save(work / "plans" / f"{task}_f0_{variant}_k{K}.json")
            row = {"key": key, "kind": "ablation", "method": variant, "k": K, "calib": task, "fold": 0,
                   "eval": task, "skipped": plan.skipped_attention, "final_losses": train,
                   "max_scalar_move": float((plan.scalar_tensor() - 1).abs().max()),
                   **study.evaluate(key, task, plan)}
            rows[key] = row
            append_row(rows_path, row)
            print({k: row[k] for k in ("key", "skipped", "eval_loss", "acc", "wiki_ppl")}, flush=True)
    write(study, rows, tasks, Path(args.out))
    return 0


def write(study, rows, tasks, out: Path) -> None:
    def p(c):
        return "<0.001" if c["p_value"] < 0.001 else f"{c['p_value']:.2f}"

    for k, r in rows.items():
        study.rows.setdefault(k, r)
    lines = ["Blocks or scalars? Hopscotch vs iterative LLM-Drop at k = 4 (fold 0), crossed: each method's blocks with "
             "and without Hopscotch's trained scalars. Made by `python experiments/scalar_ablation.py`.",
             "Intervals: 95% percentile bootstrap over items; p: paired tests on the same items (bootstrap for the "
             "loss and perplexity, exact McNemar for accuracy) against the two methods as published.",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in metadata("cpu").items() if v), ""]
    head = (f"{'task':10} {'blocks':22} {'scalars':8} {'skipped':12} {'held-out loss':24} {'accuracy':22} "
            f"{'Wikipedia ppl':22} p vs hopscotch (loss/acc/ppl)  p vs llm-drop-it (loss/acc/ppl)")
    lines.append(head)
    for task in tasks:
        cells = [("hopscotch", "trained", f"main|{task}|0|hopscotch|{K}"),
                 ("hopscotch", "1", f"ablation|{task}|hopscotch-scalars-1|{K}"),
                 ("llm-drop iterative", "trained", f"ablation|{task}|llm-drop-iterative+scalars|{K}"),
                 ("llm-drop iterative", "1", f"main|{task}|0|llm-drop-iterative|{K}")]
        ref_h, ref_d = cells[0][2], cells[3][2]
        for blocks, scalars, key in cells:
            r = study.rows.get(key)
            if r is None:
                continue
            ps = paired_p_cells(study.rows, study.paired, key, (ref_h, ref_d), p)
            lines.append(f"{task:10} {blocks:22} {scalars:8} {' '.join(map(str, r['skipped'])):12} "
                         f"{value_cell(r, 'eval_loss'):24} {value_cell(r, 'acc'):22} "
                         f"{value_cell(r, 'wiki_ppl', 2):22} "
                         f"{ps[0]:30} {ps[1]}")
    text = "\n".join(lines) + "\n"
    (out / "scalar_ablation.txt").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
