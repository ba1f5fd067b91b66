"""The fast search's screening: candidates scored without training (``strategies.ScreenStrategy`` uses it).

``screen_candidates`` scores every candidate by one forward at the current scalars, the stream below each
candidate's layer shared; ``screen_cost`` is the work that counts; ``worst_case`` bounds the budget's spend.
"""

from __future__ import annotations

import torch
from torch import nn

from ..arch import base_model
from ..patch import patched_layers, set_skips
from ..patch.offload import execution_device
from ..patch.stack import StackRun, Stream
from .config import FastConfig
from .objectives import batch_loss, loss_positions
from .train import BACKWARD_FACTOR, PassCounter, TokenPassCost, batch_tokens

__all__ = ["screen_candidates", "screen_cost", "worst_case", "set_attention_skips"]


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
            device = execution_device(layers[0].input_layernorm)  # where its weight is, or is loaded to
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


def worst_case(num_layers: int, num_skip: int, settings: FastConfig, *, final_epochs: int = 3,
               head_share: float = 0.21) -> dict:
    """The fast search's largest cost relative to the faithful one, in candidate-epochs (one candidate trained one
    epoch), on a model of ``num_layers`` equal layers whose LM head is ``head_share`` of a token-pass, with
    every token carrying a loss (the worst case for screening).

    Simulates the budget ledger with every step spending the most it may (the widest shortlist within the budget;
    never less than screening plus one candidate): returns per step the cumulative allowance, the floor and the
    spend, and the smallest possible faithful / fast ratio at ``num_skip`` (``budget_ratio`` when every floor fits,
    ``floors_fit``).
    """
    L, lam, n = num_layers, 1.0 - head_share, 1.0  # n: the share of tokens carrying a loss
    epoch_fwd = lam + head_share * n  # per calibration token
    cand_epoch = epoch_fwd * (1 + BACKWARD_FACTOR)
    R = settings.budget_ratio
    faithful_steps = [(L - s) for s in range(num_skip)]  # candidate-epochs
    reserve = final_epochs * (1 - 1 / R) / settings.budget_k if R else 0.0
    widest = settings.max_shortlist
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
