"""Hopscotch's greedy search: the runner every strategy's steps share.

The paper's rule (arXiv 2506.03303): at each step, for every attention block not yet chosen, reset all scalars to
1, skip that block with those already chosen, train all scalars for ``candidate_epochs`` epochs (Adam) and score
the candidate by its mean training loss over the last epoch; skip the best (ties: the lower block); repeat to
``num_skip``. Every candidate of a step sees the same batch order, seeded by (seed, step).

``GreedyRunner`` owns what the steps share: the patched model, the config, the search state, the token-pass counter,
each step's data order, the blocks chosen so far, the last winner's scalars and the ranks (``distributed.py``: a
step's candidates are trained side by side on the ranks of a torchrun). A strategy (``strategies.py``) is an object
with one method, ``step(step, remaining, entry)``, that returns the candidates it trained (their records, from
``runner.train``); the runner skips the best of them. Every trained candidate and every screening is written to the
state before the next starts (docs/ARCHITECTURE.md §2.6) and every decision depends only on recorded results, so a
resumed search reaches the same plan. Steps do not depend on ``num_skip``: a state written by a search for k blocks
serves a later search for fewer or more.
"""

from __future__ import annotations

import time
from typing import Protocol

import torch
from torch import nn

from ..patch import SCALAR_NAMES, get_scalars, patched_layers, reset_scalars, set_scalars
from ..progress import Progress
from .config import SearchConfig
from .distributed import LOCAL, Ranks
from .screening import screen_candidates, set_attention_skips
from .state import SearchState
from .train import PassCounter, TokenPassCost, train_schedule

__all__ = ["GreedyRunner", "Strategy", "step_schedule"]


def step_schedule(seed: int, step: int, n_batches: int, epochs: int = 1) -> list[list[int]]:
    """The batch order of every candidate of step ``step``: seeded by (seed, step), never by the candidate, so
    the candidates of a step are compared on the same batches in the same order."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + step * 1009 + 0x5EED) % (2**31))
    return [torch.randperm(n_batches, generator=gen).tolist() for _ in range(epochs)]


class Strategy(Protocol):
    label: str

    def step(self, step: int, remaining: list[int], entry: dict) -> dict[int, dict]:
        """Train some of ``remaining`` (``runner.train``) and return their records by candidate; ``entry`` is
        the step's log entry, for what the strategy wants the plan's provenance to show."""


def _last_epoch_loss(sums: list[list[float]]) -> float:
    _, s, w = max(sums, key=lambda x: x[0])
    return s / max(w, 1)


class GreedyRunner:
    """The model, config, state, token-pass counter and data order that a greedy search's steps share (the
    config's ``objective``, ``lr``, ``seed`` and ``candidate_epochs`` steer the candidates' training; strategies
    read the rest)."""

    def __init__(self, model: nn.Module, batches: list[dict], state: SearchState, config: SearchConfig, *,
                 teacher: list | None = None, progress: bool = False, ranks: Ranks = LOCAL):
        self.model, self.batches, self.state, self.config = model, batches, state, config
        self.teacher, self.progress, self.ranks = teacher, progress, ranks
        self.cost = TokenPassCost.of(model)
        self.counter = PassCounter()
        self.num_layers = len(patched_layers(model))
        self.chosen: list[int] = []
        self.scalars = torch.ones(self.num_layers, len(SCALAR_NAMES))  # the last winner's: screening runs at them

    def schedule(self, step: int) -> list[list[int]]:
        return step_schedule(self.config.seed, step, len(self.batches), self.config.candidate_epochs)

    def train(self, step: int, candidates: list[int]) -> dict[int, dict]:
        """Every candidate of ``candidates`` of step ``step`` trained from fresh scalars (or its record, when a run
        before trained it), spread over the ranks (``distributed.py``); each counted, in candidate order."""
        todo = [c for c in candidates if self.state.finished(f"step{step}/cand{c}") is None]
        for rec in self.ranks.share(todo, lambda c: self._train_one(step, c)):
            self.state.record(rec)  # rank 0 writes it; a round at a time, so a kill loses at most one round
        out = {}
        for c in candidates:
            out[c] = self.state.finished(f"step{step}/cand{c}")
            self.counter.add_record(out[c])
        return out

    def _train_one(self, step: int, c: int) -> dict:
        set_attention_skips(self.model, self.chosen + [c])
        reset_scalars(self.model)
        work, t0 = PassCounter(), time.perf_counter()
        sums, _ = train_schedule(self.model, self.batches, self.schedule(step), objective=self.config.objective,
                                 lr=self.config.lr, teacher=self.teacher, counter=work, cost=self.cost,
                                 desc=f"step {step} candidate {c}", progress=self.progress)
        return {"name": f"step{step}/cand{c}", "sums": sums, "passes": [work.forward, work.backward],
                "scalars": get_scalars(self.model).tolist(), "seconds": round(time.perf_counter() - t0, 2),
                "loss": _last_epoch_loss(sums)}

    def recorded(self, name: str) -> dict | None:
        return self.state.finished(name)

    def screen(self, name: str, batches: list[dict], candidates: list[int], teacher: list | None) -> dict:
        """``candidates`` scored without training on ``batches`` at the last winner's scalars (or the record of
        ``name``, when a run before screened it); counted."""
        rec = self.state.finished(name)
        if rec is None:
            set_scalars(self.model, self.scalars)
            work, t0 = PassCounter(), time.perf_counter()
            scores = screen_candidates(self.model, batches, candidates, objective=self.config.objective,
                                       teacher=teacher, counter=work, chosen=self.chosen, cost=self.cost)
            rec = {"name": name, "scores": {str(c): v for c, v in scores.items()},
                   "passes": [work.forward, 0.0], "seconds": round(time.perf_counter() - t0, 2)}
            # every rank screens; rank 0's record is kept, so every rank decides alike
            rec = self.ranks.broadcast(rec, f"the screening {name}")
            self.state.record(rec)
        self.counter.add_record(rec)
        return rec

    def run(self, strategy: Strategy, num_skip: int) -> list[dict]:
        """``num_skip`` greedy steps of ``strategy``; returns the step log (``self.chosen`` holds the picks)."""
        log: list[dict] = []
        bar = Progress(num_skip, strategy.label, enabled=self.progress, every_step=True, unit="steps")
        for step in range(num_skip):
            t0 = time.perf_counter()
            remaining = [c for c in range(self.num_layers) if c not in self.chosen]
            entry = {"name": f"step{step}", "chosen_before": list(self.chosen)}
            trained = strategy.step(step, remaining, entry)
            pick = min(trained, key=lambda c: (trained[c]["loss"], c))
            self.scalars = torch.tensor(trained[pick]["scalars"])
            self.chosen.append(pick)
            set_attention_skips(self.model, self.chosen)
            entry.update({"scores": {str(c): round(r["loss"], 6) for c, r in trained.items()}, "picked": pick,
                          "passes_so_far": round(self.counter.total), "seconds": round(time.perf_counter() - t0, 2)})
            log.append(entry)
            bar.update(picked=pick, loss=f"{trained[pick]['loss']:.4f}")
        bar.close()
        return log
