"""The greedy search's strategies: which candidates each step trains (``runner.py`` runs the steps).

``FaithfulStrategy`` (``hopscotch``): every remaining candidate, the paper's search.

``ScreenStrategy`` (``hopscotch-fast``): the same decision rule on an adaptive, budgeted shortlist:

1. *Screen*: every remaining candidate is scored with no training, by one forward over ``screen_fraction`` of
   the calibration batches at the previous winner's scalars, the stream below each candidate's layer shared
   (``screening.screen_candidates``). The screening batches are drawn once per search (seeded) and kept.
2. *Refine*: the ``refine`` best-screened candidates are screened again on a further, disjoint
   ``refine_fraction`` of the batches, and ranked by the loss-position-weighted mean of both screens.
3. *Shortlist*: the best ``shortlist`` candidates are trained exactly as the faithful search trains them (same
   epochs, same batch order), and so is every refined candidate whose score is within ``margin`` (relative) of
   the best, up to ``max_shortlist``; the lowest trained loss wins. It picks what the faithful search picks
   whenever the faithful winner ranks into the shortlist.
4. *Budget*: the work (token-passes, screening included) spent up to the end of step s never exceeds
   ``1/budget_ratio`` of what the faithful search spends on steps 0..s (computed exactly: same data, same cost
   model), less a reserve for the final scalars (``final_epochs`` epochs of a search to ``budget_k`` blocks, with
   the generic guard's text when it is on).
   The refinement and then the shortlist are narrowed (at worst to the single best-screened candidate) to stay
   inside it, so a search to ``budget_k`` blocks costs at least ``budget_ratio`` times fewer token-passes than
   the faithful one by construction, whenever screening plus one candidate fits a step's allowance (for
   SmolLM2's 30 layers at the defaults it fits at every step; see ``screening.worst_case``).
"""

from __future__ import annotations

import torch

from .objectives import loss_positions
from .runner import GreedyRunner
from .screening import screen_cost
from .train import BACKWARD_FACTOR, batch_tokens

__all__ = ["FaithfulStrategy", "ScreenStrategy"]


class FaithfulStrategy:
    """Every remaining candidate trained (the paper's search)."""

    label = "hopscotch search"

    def __init__(self, runner: GreedyRunner):
        self.runner = runner

    def step(self, step: int, remaining: list[int], entry: dict) -> dict[int, dict]:
        return self.runner.train(step, remaining)


class ScreenStrategy:
    """Screen, refine, train a shortlist within the budget (the module docstring, 1-4).

    What a search fixes once (seeded by the search's seed): the screening and refinement batches (disjoint, from
    one permutation), their teachers and loss-position weights, and the budget's ledger (``allowance``: the
    faithful work of the steps so far / ``budget_ratio``, less ``reserve`` per step)."""

    label = "hopscotch fast search"

    def __init__(self, runner: GreedyRunner):
        config, fast = runner.config, runner.config.fast
        self.runner, self.fast = runner, fast
        batches, teacher = runner.batches, runner.teacher
        nb = len(batches)
        perm = torch.randperm(nb, generator=torch.Generator().manual_seed(config.seed)).tolist()
        n_screen = max(1, round(fast.screen_fraction * nb))
        n_refine = min(nb - n_screen, round(fast.refine_fraction * nb)) if fast.refine else 0
        screen_idx, refine_idx = sorted(perm[:n_screen]), sorted(perm[n_screen:n_screen + n_refine])
        self.screen_batches = [batches[i] for i in screen_idx]
        self.refine_batches = [batches[i] for i in refine_idx]
        self.screen_teacher = None if teacher is None else [teacher[i] for i in screen_idx]
        self.refine_teacher = None if teacher is None else [teacher[i] for i in refine_idx]
        # loss positions of each screening set: the refined score is their position-weighted mean
        self.w_screen = sum(int(loss_positions(b).sum()) for b in self.screen_batches)
        self.w_refine = sum(int(loss_positions(b).sum()) for b in self.refine_batches)
        self.allowance = 0.0
        self.reserve = 0.0
        if fast.budget_ratio:
            # the final training's epoch, and with the generic guard as many tokens of generic text, each a loss
            epoch = runner.cost.epoch(batches)
            if config.guard.generic_weight:
                tokens = sum(batch_tokens(b) for b in batches)
                epoch += runner.cost.forward(tokens, tokens) * (1 + BACKWARD_FACTOR)
            self.reserve = config.final_epochs * epoch * (1 - 1 / fast.budget_ratio) / fast.budget_k

    def step(self, step: int, remaining: list[int], entry: dict) -> dict[int, dict]:
        run, fs = self.runner, self.fast
        rec = run.screen(f"step{step}/screen", self.screen_batches, remaining, self.screen_teacher)
        screen = {int(c): v for c, v in rec["scores"].items()}
        entry["screen"] = {str(c): round(v, 6) for c, v in screen.items()}
        ranked = sorted(remaining, key=lambda c: (screen[c], c))
        finalists = min(fs.shortlist, len(ranked))
        avail = self._available(remaining)
        one = max(run.cost.epoch(run.batches, run.chosen + [c]) for c in remaining) * run.config.candidate_epochs
        rec = self._refine(step, ranked, finalists, one, avail)
        if rec is not None:
            avail -= rec["passes"][0]
            again = {int(c): v for c, v in rec["scores"].items()}
            entry["refine"] = {str(c): round(v, 6) for c, v in again.items()}
            w = max(self.w_screen + self.w_refine, 1)
            screen = {c: (screen[c] * self.w_screen + again[c] * self.w_refine) / w if c in again else screen[c]
                      for c in screen}
            refined = sorted(again, key=lambda c: (screen[c], c))
            ranked = refined + [c for c in ranked if c not in again]
        else:
            refined = ranked
        # near-ties widen the shortlist (scores of the same data only: the refined ones when refined)
        best = screen[ranked[0]]
        close = [c for c in refined if screen[c] - best <= fs.margin * abs(best)]
        width = min(max(finalists, len(close)), fs.max_shortlist, len(ranked))
        if fs.budget_ratio:
            while width > 1 and width * one > avail:
                width -= 1
            entry["budget"] = {"available": round(avail), "planned": round(width * one)}
        trained = run.train(step, ranked[:width])
        entry["shortlist"] = {"close": len(close), "width": width, "finalists": len(trained)}
        return trained

    def _available(self, remaining: list[int]) -> float:
        """What this step may still spend: the faithful work of steps 0..this / ratio, less the reserves, less
        the work done (inf without a budget)."""
        run, ratio = self.runner, self.fast.budget_ratio
        if not ratio:
            return float("inf")
        epochs = run.config.candidate_epochs
        faithful_step = sum(run.cost.epoch(run.batches, run.chosen + [c]) for c in remaining) * epochs
        self.allowance += faithful_step / ratio - self.reserve
        return self.allowance - run.counter.total

    def _refine(self, step: int, ranked: list[int], finalists: int, one: float, avail: float) -> dict | None:
        """The refinement screening of the best-screened candidates, as many as the budget allows while the
        finalists' training still fits (its record when a run before made it); None when there is none."""
        run, name = self.runner, f"step{step}/refine"
        if run.recorded(name) is None:
            n = min(self.fast.refine, len(ranked)) if self.refine_batches else 0
            while n > finalists and sum(screen_cost(run.cost, self.refine_batches, ranked[:n], run.chosen)) \
                    + finalists * one > avail:
                n -= 1
            if n <= finalists:
                return None
            ranked = ranked[:n]
        return run.screen(name, self.refine_batches, ranked, self.refine_teacher)
