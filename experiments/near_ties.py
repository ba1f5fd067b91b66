"""How much does a near-tie at one greedy step move the final calibration loss? (issue 15)

    python experiments/near_ties.py --task arc_easy          # ~10 min on 2 cores: 8 final trainings
    python experiments/near_ties.py --task boolq --steps 0,1,2,3
    python experiments/near_ties.py --task boolq --final-seeds 1,2   # also: the winner's final loss at other seeds

The faithful search scores each candidate by its mean loss over one epoch of training from fresh scalars and
skips the best; the fast searches are judged by the *final* calibration loss (three more epochs at batch 1, then
a no-grad pass; ``fast_vs_faithful.py``). This script replays the faithful search's recorded path (fold 0 of the
quality study, ``--work``) and, at each step, trains the final scalars for the *runner-up* instead of the winner
(the blocks skipped before the step, plus the second-best candidate), exactly as ``search`` trains them
(``train_final_scalars``: 3 epochs, lr 3e-3, batch 1, seed 0), and measures its final loss. Per step the table
gives the step-score gap between winner and runner-up and the final-loss gap: if a runner-up within a fraction
of a percent at the step can end percents away, a fast search that takes it is judged by the faithful search's
luck at that near-tie as much as by its own choices. The winner's own final loss is recomputed the same way as a
check (it must equal the fast_vs_faithful row).

``--final-seeds`` also trains each winner's final scalars with other seeds of the final training's data order
(same blocks, same items, same recipe): the spread of the faithful plan's own final loss, i.e. how much of a
fast-vs-faithful gap the final training's batch order alone can make. Rows: <work>/near_ties_<task>.jsonl
(resumable); table: <out>/near_ties_<task>.txt.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from common import PAPER, RESULTS_DIR  # noqa: E402  (first: results go to experiments/results)
from hopscotch.bench.results import metadata
from rows import append_row, read_rows
from hopscotch.evaluate import mean_nll
from hopscotch.models import load_model
from hopscotch.search import SearchConfig
from hopscotch.search.state import read_steps
from hopscotch.search.train import train_final_scalars
from hopscotch.tasks import prepare_task


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="arc_easy")
    p.add_argument("--steps", default="0,1,2,3,4,5,6,7", help="steps to replay, comma-separated (default 0-7)")
    p.add_argument("--final-seeds", default="",
                   help="other seeds of the final training to train each winner with, comma-separated (default none)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--work", default=str(RESULTS_DIR / "study_work"))
    p.add_argument("--out", default=str(RESULTS_DIR))
    args = p.parse_args(argv)
    try:
        args.final_seeds = sorted({int(x) for x in args.final_seeds.split(",") if x.strip()})
    except ValueError:
        p.error(f"--final-seeds must be comma-separated integers, got {args.final_seeds!r}")
    if any(x <= 0 for x in args.final_seeds):
        p.error(f"--final-seeds are the seeds besides 0 (positive integers), got {args.final_seeds}")
    return args


def step_scores(state_path: Path) -> dict[int, dict[int, float]]:
    """Every trained candidate's score per step of a recorded faithful search."""
    steps: dict[int, dict[int, float]] = {}
    for rec in read_steps(state_path):
        name = rec.get("name", "")
        if name.startswith("step") and "/cand" in name:
            step, cand = name[4:].split("/cand")
            steps.setdefault(int(step), {})[int(cand)] = rec["loss"]
    return steps


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    work, out = Path(args.work), Path(args.out)
    scores = step_scores(work / f"{args.task}_f0_hopscotch.state.json")
    wanted = sorted(int(s) for s in args.steps.split(","))
    missing = [s for s in wanted if s not in scores]
    if missing:
        raise SystemExit(f"steps {missing} are not in the recorded faithful search of {args.task} "
                         f"(it has steps {sorted(scores)})")
    rows_path = work / f"near_ties_{args.task}.jsonl"
    done = read_rows(rows_path, lambda r: (r["step"], r["role"]))
    model, tok = load_model(None)
    # the quality study's fold 0, as fast_vs_faithful.py: the recorded search ran on exactly these batches
    data = prepare_task(model, tok, args.task, calibration=32, evaluation=0, batch_size=4, max_new_tokens=48,
                        wiki_blocks=0, text_blocks=0, progress=False)
    winners = [min(scores[s], key=lambda c: (scores[s][c], c)) for s in sorted(scores)]
    for step in wanted:
        ranked = sorted(scores[step], key=lambda c: (scores[step][c], c))
        jobs = [("winner", ranked[0], 0), ("runner-up", ranked[1], 0),
                *((f"winner seed{x}", ranked[0], x) for x in args.final_seeds)]
        for role, block, seed in jobs:
            if (step, role) in done:
                continue
            blocks = winners[:step] + [block]
            train_final_scalars(model, data.calibration, blocks, SearchConfig(objective=data.objective, seed=seed,
                                                                              final_batch_size=1, guard=PAPER))
            row = {"step": step, "role": role, "block": block, "skipped": sorted(blocks), "final_seed": seed,
                   "step_score": scores[step][block], "final_loss": mean_nll(model, data.calibration,
                                                                             progress=False).nll}
            done[(step, role)] = row
            append_row(rows_path, row)
            print(json.dumps(row), flush=True)
    write(done, args, out)
    return 0


def write(done: dict, args, out: Path) -> None:
    seeds = sorted({r.get("final_seed", 0) for r in done.values()} - {0})
    lines = [f"near-ties on the faithful path, SmolLM2-135M-Instruct, {args.task} (32 items, fold 0): the runner-up "
             "of each step instead of the winner",
             "step score: mean loss over one epoch from fresh scalars (what the search compares); final: calibration "
             "NLL after the search's final scalars (3 epochs, batch 1)",
             f"{'step':>4} {'winner':>6} {'runner-up':>9} {'step gap':>9} {'final (winner)':>15} "
             f"{'final (runner-up)':>18} {'final gap':>10}"
             + "".join(f"{f'winner, seed {x}':>16}" for x in seeds)]
    for step in sorted({s for s, _ in done}):
        w, r = done.get((step, "winner")), done.get((step, "runner-up"))
        if w is None or r is None:
            continue
        other = [done.get((step, f"winner seed{x}")) for x in seeds]
        lines.append(f"{step:>4} {w['block']:>6} {r['block']:>9} "
                     f"{100 * (r['step_score'] / w['step_score'] - 1):>+8.2f}% {w['final_loss']:>15.4f} "
                     f"{r['final_loss']:>18.4f} {100 * (r['final_loss'] / w['final_loss'] - 1):>+9.2f}%"
                     + "".join(f"{'-':>16}" if o is None
                               else f"{100 * (o['final_loss'] / w['final_loss'] - 1):>+15.2f}%" for o in other))
    if seeds:
        lines.append("winner, seed s: the winner's final loss when the final training's data order has seed s, "
                     "against seed 0 (same blocks)")
    meta = metadata("cpu")
    lines.append(f"({meta['device']}, torch {meta['torch']}, commit {meta['commit']})")
    text = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"near_ties_{args.task}.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    sys.exit(main())
