"""The fast search's screening (no training) and its *screen* strategy's step (greedy.py's docstring, 1-4).

``screen_candidates`` scores every candidate by one forward with the previous winner's scalars; ``screen_step``
ranks a step's candidates by screen and refinement, widens the shortlist on near-ties, and trains or probes it
inside the work budget; ``worst_case`` bounds that budget's spend. ``ScreenSets`` holds what a search fixes once:
which batches screen and which refine (the lazy strategy screens on both), and the budget's ledger.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from ..arch import base_model
from ..patch import patched_layers, set_skips
from ..patch.stack import StackRun, Stream
from .objectives import batch_loss, loss_positions
from .state import SearchState
from .train import BACKWARD_FACTOR, PassCounter, TokenPassCost, batch_tokens

if TYPE_CHECKING:
    from .greedy import FastSettings

__all__ = ["screen_candidates", "screen_cost", "worst_case", "ScreenSets", "screen_step", "set_attention_skips"]


def set_attention_skips(model, attention) -> None:
    """Skips through the patch API only (the one way to change them); MLP blocks are never skipped here."""
    set_skips(model, attention=attention, mlp=())


@torch.no_grad()
def screen_candidates(model: nn.Module, batches: list[dict], candidates: list[int], *, objective: str,
                      teacher: list | None, counter: PassCounter, chosen: list[int] = (),
                      cost: TokenPassCost | None = None) -> dict[int, float]:
    """Loss with each candidate's attention block skipped besides ``chosen`` (current scalars), no training.

    The stream below layer c is shared: one forward of the prefix, one partial forward from c per candidate.
    The model is left with exactly ``chosen`` skipped.
    """
    cost = cost or TokenPassCost.of(model)
    base = base_model(model)
    layers = patched_layers(model)
    n_layers = len(layers)
    chosen = list(chosen)
    cand = set(candidates)
    sums = {c: 0.0 for c in candidates}
    weight = 0
    set_attention_skips(model, chosen)
    try:
        for i, batch in enumerate(batches):
            device = layers[0].input_layernorm.weight.device
            run = StackRun(base, input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device))
            stream = Stream(run.hidden)
            n = int(loss_positions(batch).sum())
            for c in range(n_layers):
                if c in cand:
                    branch = stream.clone()
                    set_attention_skips(model, chosen + [c])
                    try:
                        hidden = run.run(branch, start=c)
                    finally:
                        set_attention_skips(model, chosen)
                    loss = batch_loss(model, batch, objective, teacher[i] if teacher is not None else None,
                                      hidden=hidden)
                    sums[c] += loss.item() * n
                layers[c](stream, run)
            counter.forward += screen_cost(cost, [batch], candidates, chosen)[0]
            weight += n
    finally:
        set_attention_skips(model, chosen)
    return {c: s / max(weight, 1) for c, s in sums.items()}


def screen_cost(cost: TokenPassCost, batches: list[dict], candidates: list[int], chosen=()) -> list[float]:
    """Token-passes ``screen_candidates`` counts for ``candidates`` over ``batches`` (per batch): each candidate's
    forward from its own layer with the LM head at the loss positions, and the shared stream once, no head."""
    chosen = list(chosen)
    out = []
    for batch in batches:
        n, tokens = int(loss_positions(batch).sum()), batch_tokens(batch)
        out.append(sum(cost.forward(tokens, n, c, chosen + [c]) for c in candidates)
                   + cost.forward(tokens, 0, 0, chosen))
    return out


def worst_case(num_layers: int, num_skip: int, settings: FastSettings, *, final_epochs: int = 3,
               head_share: float = 0.21, answer_share: float = 1.0) -> dict:
    """The fast search's largest cost relative to the faithful one, in candidate-epochs (one candidate trained one
    epoch), on a model of ``num_layers`` equal layers whose LM head is ``head_share`` of a token-pass, with
    ``answer_share`` of the tokens carrying a loss (1.0 is the worst case for screening).

    Simulates the budget ledger with every step spending the most it may (the widest shortlist, probed, within
    the budget; never less than screening plus one candidate): returns per step the cumulative allowance, the
    floor and the spend, and the smallest possible faithful / fast ratio at ``num_skip`` (``budget_ratio`` when
    every floor fits, ``floors_fit``).
    """
    L, lam, n = num_layers, 1.0 - head_share, answer_share
    epoch_fwd = lam + head_share * n  # per calibration token
    cand_epoch = epoch_fwd * (1 + BACKWARD_FACTOR)
    R = settings.budget_ratio
    faithful_steps = [(L - s) for s in range(num_skip)]  # candidate-epochs
    reserve = final_epochs * (1 - 1 / R) / settings.budget_k if R else 0.0
    p = settings.probe_fraction
    widest = max(settings.max_shortlist * p + settings.shortlist * (1 - p), settings.shortlist)
    rows, fits, allowed, spent = [], True, 0.0, 0.0

    def screening(fraction, count):  # the ``count`` deepest-reaching candidates on ``fraction`` of the data
        return fraction * (lam * (1 + sum((L - c) / L for c in range(count))) + head_share * n * count)

    for s in range(num_skip):
        rem = L - s  # worst case: the remaining candidates are the deepest-reaching ones
        screen = screening(settings.screen_fraction, rem)
        refine = screening(settings.refine_fraction, min(settings.refine, rem))
        floor = screen / cand_epoch + 1
        allowed += faithful_steps[s] / R - reserve if R else float("inf")
        fits &= spent + floor <= allowed + 1e-12
        # the ledger: the widest refinement and shortlist the budget allows, never less than the floor
        step = max(floor, min((screen + refine) / cand_epoch + widest, allowed - spent))
        spent += step
        rows.append({"step": s, "allowance_cumulative": allowed, "floor": floor, "spent": step})
    faithful = sum(faithful_steps) + final_epochs
    fast = spent + final_epochs
    return {"faithful_candidate_epochs": faithful, "fast_candidate_epochs_max": fast, "ratio_min": faithful / fast,
            "floors_fit": fits, "steps": rows}


class ScreenSets:
    """What a fast search fixes once (seeded by ``seed``): the screening and refinement batches (disjoint, drawn
    from one permutation), their teachers and loss-position weights, the probe length, and the budget's ledger
    (``allowance``: cumulative faithful work / ``budget_ratio`` less ``reserve`` per step)."""

    def __init__(self, batches: list[dict], teacher: list | None, fs: FastSettings, *, seed: int, cost: TokenPassCost,
                 final_epochs: int):
        nb = len(batches)
        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(nb, generator=gen).tolist()
        n_screen = max(1, round(fs.screen_fraction * nb))
        n_refine = min(nb - n_screen, round(fs.refine_fraction * nb)) if fs.refine else 0
        screen_idx, refine_idx = sorted(perm[:n_screen]), sorted(perm[n_screen:n_screen + n_refine])
        self.screen_batches = [batches[i] for i in screen_idx]
        self.refine_batches = [batches[i] for i in refine_idx]
        self.screen_teacher = None if teacher is None else [teacher[i] for i in screen_idx]
        self.refine_teacher = None if teacher is None else [teacher[i] for i in refine_idx]
        # loss positions of each screening set: the refined score is their position-weighted mean
        self.w_screen = sum(int(loss_positions(b).sum()) for b in self.screen_batches)
        self.w_refine = sum(int(loss_positions(b).sum()) for b in self.refine_batches)
        self.n_probe = max(1, round(fs.probe_fraction * nb))
        self.allowance = 0.0
        self.reserve = 0.0
        if fs.budget_ratio:
            self.reserve = final_epochs * cost.epoch(batches) * (1 - 1 / fs.budget_ratio) / fs.budget_k

    @property
    def all_batches(self) -> list[dict]:
        return self.screen_batches + self.refine_batches

    @property
    def all_teacher(self) -> list | None:
        return None if self.screen_teacher is None else self.screen_teacher + self.refine_teacher


def screen_step(step: int, remaining: list[int], chosen: list[int], sets: ScreenSets, fs: FastSettings, *,
                entry: dict, state: SearchState, cost: TokenPassCost, batches: list[dict], candidate_epochs: int,
                counter: PassCounter, screened: Callable, probe: Callable, finish: Callable) -> list[int]:
    """One step of the screen strategy; returns the candidates trained (``finish`` puts their losses where the
    caller picks from). ``screened``, ``probe`` and ``finish`` are greedy_search's recorded helpers."""
    rec = screened(f"step{step}/screen", sets.screen_batches, remaining, sets.screen_teacher)
    counter.add_record(rec)
    screen = {int(c): v for c, v in rec["scores"].items()}
    entry["screen"] = {str(c): round(v, 6) for c, v in screen.items()}
    ranked = sorted(remaining, key=lambda c: (screen[c], c))
    finalists_n = min(fs.shortlist, len(ranked))
    # the budget: what this step may still spend (faithful work of steps 0..step / ratio, less sets.reserve)
    one = max(cost.epoch(batches, chosen + [c]) for c in remaining) * candidate_epochs
    total_positions = len(batches) * candidate_epochs
    p = sets.n_probe / total_positions
    avail = float("inf")
    if fs.budget_ratio:
        faithful_step = sum(cost.epoch(batches, chosen + [c]) for c in remaining) * candidate_epochs
        sets.allowance += faithful_step / fs.budget_ratio - sets.reserve
        avail = sets.allowance - counter.total
    # refine: the best-screened candidates screened again on further batches (one batch of a few items
    # ranks candidates poorly; the position-weighted mean over both sets ranks them better), as many as
    # the budget allows while the finalists' training still fits
    n_ref = min(fs.refine, len(ranked)) if sets.refine_batches else 0
    rec = state.finished(f"step{step}/refine")
    if rec is None and n_ref > finalists_n:
        def refine_cost(n):
            return sum(screen_cost(cost, sets.refine_batches, ranked[:n], chosen))

        while n_ref > finalists_n and refine_cost(n_ref) + finalists_n * one > avail:
            n_ref -= 1
        if n_ref > finalists_n:
            rec = screened(f"step{step}/refine", sets.refine_batches, ranked[:n_ref], sets.refine_teacher)
    if rec is not None:
        counter.add_record(rec)
        avail -= rec["passes"][0]
        again = {int(c): v for c, v in rec["scores"].items()}
        entry["refine"] = {str(c): round(v, 6) for c, v in again.items()}
        screen = {c: (screen[c] * sets.w_screen + again[c] * sets.w_refine) / max(sets.w_screen + sets.w_refine, 1)
                  if c in again else screen[c] for c in screen}
        refined = sorted(again, key=lambda c: (screen[c], c))
        ranked = refined + [c for c in ranked if c not in again]
    else:
        refined = ranked
    # near-ties widen the shortlist (scores of the same data only: the refined ones when refined)
    best = screen[ranked[0]]
    close = [c for c in refined if screen[c] - best <= fs.margin * abs(best)]
    width = min(max(finalists_n, len(close)), fs.max_shortlist, len(ranked))
    probing = sets.n_probe < total_positions
    if not probing:  # the widened shortlist is trained in full
        finalists_n = width
    if fs.budget_ratio:

        def spend(w, f):
            return (w * p + f * (1 - p)) * one if w > f and probing else f * one

        while width > finalists_n and spend(width, finalists_n) > avail:
            width -= 1
        while finalists_n > 1 and spend(width, finalists_n) > avail:
            finalists_n -= 1
            width = finalists_n
        entry["budget"] = {"available": round(avail), "planned": round(spend(width, finalists_n))}
    if width > finalists_n and probing:
        probed = ranked[:width]
        probes = {c: probe(c, sets.n_probe) for c in probed}
        entry["probe"] = {str(c): round(r["loss"], 6) for c, r in probes.items()}
        trained = sorted(probed, key=lambda c: (probes[c]["loss"], c))[:finalists_n]
        for c in trained:
            finish(c, start=sets.n_probe, state_in=probes[c])
    else:
        trained = ranked[:finalists_n]
        for c in trained:
            finish(c)
    entry["shortlist"] = {"close": len(close), "width": width, "finalists": len(trained)}
    return trained
