"""Searches on a tiny model, for the candidate-parallel tests: run under torchrun (every rank saves its plan) or
called in the test's own process (the one-process reference).

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m tests.helpers.distributed_search OUT \
        [NAME=]METHOD...

Each search's state is OUT/NAME.state.json (NAME: the method when not given; a state already there is resumed) and
each rank saves its plan as OUT/NAME-rankR.json.

``--die RANK:STEP:CANDIDATE`` makes that rank kill itself (SIGKILL) when it is about to train that candidate, and
``--hang RANK:STEP:CANDIDATE`` makes it stop answering there (sleep): a rank dying or hanging mid-step, at a known
point. A failing rank prints one line, ``rank R: error: ...``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import torch

from hopscotch.errors import HopscotchError
from hopscotch.search import search
from hopscotch.search.distributed import init_from_env
from hopscotch.search.runner import GreedyRunner
from tests.helpers.model_testing import calibration_batches, tiny_model

NUM_LAYERS, NUM_SKIP = 6, 3
SETTINGS = dict(num_skip=NUM_SKIP, final_epochs=1, generic_weight=0, progress=False)
FAST = dict(screen_fraction=0.34, refine=3, refine_fraction=0.34, shortlist=2, max_shortlist=3, budget_ratio=0)


def run_search(method: str, state_path=None):
    """The search every test compares: a 6-layer tiny Llama, 3 blocks; the fast one with a shortlist of 2-3."""
    model = tiny_model("llama", num_layers=NUM_LAYERS)
    more = FAST if method == "hopscotch-fast" else {}
    return search(model, calibration_batches(n=6), method=method, state_path=state_path, **SETTINGS, **more)


def _fail_at(how: str, rank: int, step: int, cand: int) -> None:
    train_one = GreedyRunner._train_one

    def dying(self, s, c):
        if self.ranks.rank == rank and (s, c) == (step, cand):
            if how == "die":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(3600)
        return train_one(self, s, c)

    GreedyRunner._train_one = dying


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("searches", nargs="+", metavar="[NAME=]METHOD")
    p.add_argument("--die", default=None)
    p.add_argument("--hang", default=None)
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args()
    torch.set_num_threads(1)
    ranks = init_from_env(timeout_s=args.timeout)
    for how in ("die", "hang"):
        if getattr(args, how):
            _fail_at(how, *(int(x) for x in getattr(args, how).split(":")))
    out = Path(args.out)
    try:
        for spec in args.searches:
            name, _, method = spec.rpartition("=")
            name = name or method
            plan = run_search(method, state_path=out / f"{name}.state.json")
            plan.save(out / f"{name}-rank{ranks.rank}.json")
    except HopscotchError as exc:
        print(f"rank {ranks.rank}: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
