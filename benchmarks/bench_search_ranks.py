"""Search throughput on 1 and N processes (``hopscotch search --nproc N``), and whether the plans are the same.

Runs each search with a fresh state file, on the packaged SmolLM2-135M-Instruct, at 1 and at ``--nproc`` ranks:

  * ``readme``: the README's main command's search (``hopscotch search``: ARC-Easy, 32 items, hopscotch-fast, 4
    blocks), without the evaluation and speed measurement around it;
  * ``faithful``: the paper's search (every candidate trained: 30 of them), 4 calibration items, 1 block.

Reports per run the search's wall time, its token-passes per second (``train.py`` defines the unit), the mean
wall time per step, the token-passes and seconds of one candidate's training (for projections), and whether the
N-rank plan equals the 1-rank plan (blocks, and scalars bit for bit); appends the rows to benchmarks/results/search_ranks.csv and prints a table.

    python benchmarks/bench_search_ranks.py --nproc 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results  # noqa: E402

SEARCHES = {
    "readme": [],
    "faithful": ["--method", "hopscotch", "--num-skip", "1", "--calibration", "4"],
}


def _run(args: list[str], out: Path, nproc: int) -> dict:
    # --evaluation 0: no evaluation answers generated (the calibration items do not depend on it)
    cmd = [sys.executable, "-m", "hopscotch", "search", *args, "--evaluation", "0", "--no-eval", "--no-speed",
           "--quiet", "--json",
           "--out", str(out), "--nproc", str(nproc)]
    print("$ hopscotch " + " ".join(cmd[3:]), file=sys.stderr, flush=True)
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"bench_search_ranks: {' '.join(cmd)} failed:\n{run.stderr[-2000:]}")
    return json.loads(run.stdout)


def row(name: str, nproc: int, out: Path) -> dict:
    """The CSV row of the search whose plan is at ``out`` (its state beside it)."""
    from hopscotch import SkipPlan
    from hopscotch.search.state import read_steps

    plan = SkipPlan.load(out)
    steps = plan.provenance["steps"]
    cands = [r for r in read_steps(out.with_name(out.stem + ".state.json")) if "/cand" in r["name"]]
    wall = plan.provenance["wall_seconds"]
    passes = plan.provenance["token_passes"]["total"]
    return {"search": name, "ranks": nproc, "threads_per_rank": _threads(nproc),
            "command": "hopscotch search " + " ".join(SEARCHES[name]) + f" --nproc {nproc}",
            "blocks": plan.skipped_attention, "token_passes": passes, "wall_s": wall,
            "token_passes_per_s": round(passes / wall), "steps": len(steps),
            "s_per_step": round(sum(s["seconds"] for s in steps) / len(steps), 1), "candidates_trained": len(cands),
            "token_passes_per_candidate": round(sum(sum(r["passes"]) for r in cands) / len(cands)),
            "s_per_candidate": round(sum(r["seconds"] for r in cands) / len(cands), 2),
            "same_plan_as_1_rank": "", "method": plan.provenance["method"],
            "load_average": round(os.getloadavg()[0], 1)}


def compare(rows: list[dict], one: Path, many: Path) -> None:
    """Say in the last row whether the plans at ``one`` (1 rank) and ``many`` are the same, scalars bit for bit."""
    import torch

    from hopscotch import SkipPlan

    a, b = SkipPlan.load(one), SkipPlan.load(many)
    same = a.skipped_attention == b.skipped_attention and torch.equal(a.scalar_tensor(), b.scalar_tensor())
    rows[-1]["same_plan_as_1_rank"] = "yes, scalars bit for bit" if same else (
        f"NO: blocks {a.skipped_attention} vs {b.skipped_attention}, largest scalar difference "
        f"{float((a.scalar_tensor() - b.scalar_tensor()).abs().max()):.3g}")


def report(rows: list[dict]) -> None:
    """Print the table and append the rows to benchmarks/results/search_ranks.csv."""
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'search':<10}{'ranks':>6}{'wall s':>9}{'s/step':>9}{'token-passes':>14}{'passes/s':>10}"
          f"{'cands':>7}{'passes/cand':>13}{'s/cand':>8}  blocks  same plan")
    for r in rows:
        print(f"{r['search']:<10}{r['ranks']:>6}{r['wall_s']:>9.1f}{r['s_per_step']:>9.1f}{r['token_passes']:>14,}"
              f"{r['token_passes_per_s']:>10,}{r['candidates_trained']:>7}{r['token_passes_per_candidate']:>13,}"
              f"{r['s_per_candidate']:>8}  {r['blocks']}  {r['same_plan_as_1_rank']}")
    append_results("search_ranks.csv", [{**r, "blocks": " ".join(map(str, r["blocks"]))} for r in rows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=2, help="the ranks compared with one process (default 2)")
    p.add_argument("--searches", default=",".join(SEARCHES), help=f"which of {', '.join(SEARCHES)} (default all)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.searches.split(","):  # each pair reported as soon as it is done
            rows, outs = [], {}
            for nproc in (1, args.nproc):
                outs[nproc] = Path(tmp) / f"{name}-{nproc}.json"
                _run(SEARCHES[name], outs[nproc], nproc)
                rows.append(row(name, nproc, outs[nproc]))
            compare(rows, outs[1], outs[args.nproc])
            report(rows)


def _threads(nproc: int) -> int:
    """The threads each rank runs (``cli/launch.py`` shares the cores out; one process takes them all)."""
    if "OMP_NUM_THREADS" in os.environ:
        return int(os.environ["OMP_NUM_THREADS"])
    return max(1, (os.cpu_count() or 1) // nproc)


if __name__ == "__main__":
    main()
