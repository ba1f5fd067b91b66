"""Which cheap score predicts a candidate's trained loss? Diagnostics for the fast search's screen (issue 15).

    python experiments/screen_diagnostics.py --task boolq --steps 0,2            # ~35 min on 2 cores (1 thread)
    python experiments/screen_diagnostics.py --task boolq --path fast --steps 1 --proxies theta,ones --watch 6

The fast search ranks a step's candidates without training them (``screen``: one forward with the scalars the
previous step's winner learnt) and trains only the few best; the faithful search trains every candidate one
epoch from fresh scalars and picks the lowest mean training loss. This script replays the recorded searches of
the quality study (``--work``: the search states of fold 0) along one of their paths (the blocks each picked) and
scores every remaining candidate of the chosen steps with each proxy, on the two batches the fast search screens
and refines on:

  theta        the fast search's screen: the previous winner's scalars, no training
  ones         the same with fresh scalars (all 1)
  sign0.02     one gradient on the first batch of the step's shared order, every scalar moved 0.02 against its
               sign (Adam's first step at lr 0.02), then scored
  sign0.05     the same, 0.05
  adam2        two Adam steps (lr 1e-2, from the previous winner's scalars) on the first two batches of the
               step's shared order, then scored
  adam2_train  the mean training loss of those two Adam steps (what a two-batch probe would score)

On the faithful path every candidate's trained loss is recorded, so the summary gives each proxy's rank
correlation with it and the rank it gives the faithful winner; on the fast path it gives the rank of ``--watch``.
Per-candidate results go to <work>/screen_diagnostics_<task>_<path>.jsonl (resumable); the summary to
<out>/screen_diagnostics_<task>.txt (appended per run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from common import RESULTS_DIR  # noqa: E402  (first: results go to experiments/results)
from hopscotch.bench.results import metadata
from rows import append_row, read_rows
from hopscotch.models import load_model
from hopscotch.patch import patch_model, patched_layers, set_scalars, set_skips
from hopscotch.search.runner import step_schedule
from hopscotch.search.state import read_steps
from hopscotch.search.objectives import batch_loss, loss_positions
from hopscotch.search.train import frozen_base, scalar_parameters
from hopscotch.tasks import prepare_task

PROXIES = ("theta", "ones", "sign0.02", "sign0.05", "adam2", "adam2_train")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="boolq")
    p.add_argument("--path", choices=("faithful", "fast"), default="faithful",
                   help="whose picks define each step's already-skipped blocks (default faithful)")
    p.add_argument("--steps", default="0,2", help="steps to score, comma-separated (default 0,2)")
    p.add_argument("--proxies", default=",".join(PROXIES), help=f"subset of {','.join(PROXIES)}")
    p.add_argument("--candidates", default=None, help="only these blocks (default: every remaining one)")
    p.add_argument("--watch", type=int, default=None, help="report this block's rank under every proxy")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: runs beside the study)")
    p.add_argument("--work", default=str(RESULTS_DIR / "study_work"))
    p.add_argument("--out", default=str(RESULTS_DIR))
    args = p.parse_args(argv)
    unknown = set(args.proxies.split(",")) - set(PROXIES)
    if unknown:
        p.error(f"--proxies: unknown {sorted(unknown)}; expected a subset of {','.join(PROXIES)}")
    return args


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation (ties broken by position: the scores here are continuous)."""
    def ranks(x):
        r = torch.empty(len(x))
        r[torch.tensor(x).argsort()] = torch.arange(len(x), dtype=torch.float)
        return r - r.mean()
    ra, rb = ranks(a), ranks(b)
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def recorded_path(state_file: Path, steps: int) -> list[tuple[int, list[float], dict[int, float]]]:
    """Per step of a recorded search: (winner, winner's trained scalars, trained loss of every trained candidate)."""
    if not state_file.exists():
        raise SystemExit(f"{state_file} not found: run the quality study (or fast_vs_faithful.py) for this task first")
    rec = {r["name"]: r for r in read_steps(state_file)}
    out = []
    for s in range(steps):
        cands = {int(n.split("cand")[1]): r for n, r in rec.items() if n.startswith(f"step{s}/cand")}
        if not cands:
            raise SystemExit(f"{state_file} has no step {s}: the search went only {len(out)} steps")
        win = min(cands, key=lambda c: (cands[c]["loss"], c))
        out.append((win, cands[win]["scalars"], {c: r["loss"] for c, r in cands.items()}))
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    proxies = args.proxies.split(",")
    steps = sorted(int(s) for s in args.steps.split(","))
    work, out = Path(args.work), Path(args.out)
    model, tok = load_model(None)
    # the quality study's fold 0 (as fast_vs_faithful.py): the recorded searches were run on exactly these batches
    data = prepare_task(model, tok, args.task, calibration=32, evaluation=0, batch_size=4, max_new_tokens=48,
                        wiki_blocks=0, text_blocks=0, progress=False)
    batches, objective, nb = data.calibration, data.objective, len(data.calibration)
    method = "hopscotch" if args.path == "faithful" else "hopscotch-fast"
    path = recorded_path(work / f"{args.task}_f0_{method}.state.json", max(steps) + 1)
    patch_model(model)
    model.eval()
    # the fast search's screening and refinement batches (ScreenStrategy: a seed-0 permutation, 15% + 15%)
    perm = torch.randperm(nb, generator=torch.Generator().manual_seed(0)).tolist()
    n_screen = max(1, round(0.15 * nb))
    scored_on = [batches[i] for i in sorted(perm[:2 * n_screen])]
    params = scalar_parameters(model)

    @torch.no_grad()
    def loss_on(bs):
        w = [int(loss_positions(b).sum()) for b in bs]
        return sum(batch_loss(model, b, objective).item() * n for b, n in zip(bs, w)) / sum(w)

    def score(chosen, c, theta, order, proxies):
        set_skips(model, attention=chosen + [c], mlp=())
        r = {}
        if "theta" in proxies:
            set_scalars(model, theta)
            r["theta"] = loss_on(scored_on)
        if "ones" in proxies:
            set_scalars(model, torch.ones_like(theta))
            r["ones"] = loss_on(scored_on)
        signs = [p for p in proxies if p.startswith("sign")]
        if signs:
            set_scalars(model, theta)
            with frozen_base(model), torch.enable_grad():
                grads = torch.autograd.grad(batch_loss(model, batches[order[0]], objective), params, allow_unused=True)
            for name in signs:
                with torch.no_grad():
                    for p, g in zip(params, grads):
                        if g is not None:
                            p.sub_(float(name[4:]) * g.sign())
                r[name] = loss_on(scored_on)
                set_scalars(model, theta)
        if "adam2" in proxies or "adam2_train" in proxies:
            set_scalars(model, theta)
            opt, seen = torch.optim.Adam(params, lr=1e-2), []
            with frozen_base(model), torch.enable_grad():
                for i in order[:2]:
                    loss = batch_loss(model, batches[i], objective)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    seen.append(loss.item())
            r["adam2_train"] = sum(seen) / len(seen)
            if "adam2" in proxies:
                r["adam2"] = loss_on(scored_on)
        return r

    rows_file = work / f"screen_diagnostics_{args.task}_{args.path}.jsonl"
    done = read_rows(rows_file, lambda r: (r["step"], r["candidate"]))
    lines = []
    for s in steps:
        chosen = [w for w, _, _ in path[:s]]
        theta = torch.tensor(path[s - 1][1]) if s else torch.ones(len(patched_layers(model)), 4)
        order = step_schedule(0, s, nb)[0]
        remaining = [c for c in range(theta.shape[0]) if c not in chosen]
        if args.candidates:
            remaining = [c for c in remaining if c in {int(x) for x in args.candidates.split(",")}]
        trained = path[s][2]
        for c in remaining:
            r = done.get((s, c))
            if r is None or any(p not in r for p in proxies):
                t0 = time.perf_counter()
                new = score(chosen, c, theta, order, [p for p in proxies if r is None or p not in r])
                r = {**(r or {}), "step": s, "candidate": c, "chosen": chosen, "trained": trained.get(c), **new,
                     "seconds": round(time.perf_counter() - t0, 1)}
                done[(s, c)] = r
                append_row(rows_file, r)
                print(json.dumps(r), flush=True)
        rows = [done[(s, c)] for c in remaining]
        everyone = all(r["trained"] is not None for r in rows) and len(rows) > 2
        win = min(rows, key=lambda r: r["trained"])["candidate"] if everyone else None
        lines.append(f"{args.task}, {args.path} path, step {s}, already skipped {chosen}, {len(rows)} candidates"
                     + (f"; trained winner {win} ({trained[win]:.4f})" if win is not None else ""))
        for p in proxies:
            ranked = [r["candidate"] for r in sorted(rows, key=lambda r: r[p])]
            cells = [f"  {p:<12} top 3 {ranked[:3]}"]
            if everyone:
                rho = spearman([r[p] for r in rows], [r["trained"] for r in rows])
                cells.append(f"rank corr. with trained {rho:.3f}, winner ranked {ranked.index(win) + 1}")
            if args.watch is not None and args.watch in ranked:
                cells.append(f"block {args.watch} ranked {ranked.index(args.watch) + 1}")
            lines.append("  ".join(cells))
    text = "\n".join(lines)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"screen_diagnostics_{args.task}.txt").open("a") as f:
        f.write(f"# {' '.join(sys.argv[1:]) or '(defaults)'}  commit {metadata('cpu')['commit']}\n{text}\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
