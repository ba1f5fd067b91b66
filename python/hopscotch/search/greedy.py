"""Hopscotch's greedy search, faithful to the paper and fast.

Faithful (arXiv 2506.03303): at each step, for every attention block not yet chosen, reset all scalars to 1,
skip that block with those already chosen, train all scalars for one epoch (Adam, lr 1e-2) and score the
candidate by its mean training loss; skip the best; repeat to ``num_skip``.

Fast (ours): the same decision rule, applied to a shortlist. At each step every candidate is first *screened*
without training: one forward of a subset of the calibration data with the scalars the previous step's winner
learnt, where the residual stream entering layer c is computed once and shared by every candidate c' >= c (a
candidate changes nothing below itself), so screening all candidates costs about half a forward per candidate
instead of a full one. The ``shortlist`` best-screened candidates are then trained exactly as the faithful
search trains every candidate, and the best trained loss wins. The fast search therefore picks what the faithful
one picks whenever the faithful winner screens into the shortlist.

Every finished candidate and step is written to the search state before the next starts (invariant 6); each
candidate's training is seeded by (seed, step, candidate), so a resumed search reaches the same plan. Steps do
not depend on ``num_skip``, so a state written by a search for k blocks serves a later search for fewer or more.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from ..arch import base_model
from ..patch import get_scalars, patched_layers, reset_scalars, set_scalars, set_skips
from ..patch.stack import StackRun, Stream
from .objectives import batch_loss, loss_positions
from .state import SearchState
from .train import PassCounter, batch_tokens, train_scalars

__all__ = ["greedy_search", "screen_candidates", "candidate_seed"]


def candidate_seed(seed: int, step: int, candidate: int) -> int:
    return (seed * 1_000_003 + step * 1009 + candidate) % (2**31)


@torch.no_grad()
def screen_candidates(model: nn.Module, batches: list[dict], candidates: list[int], *, objective: str,
                      teacher: list | None, counter: PassCounter) -> dict[int, float]:
    """Loss with each candidate's attention block skipped (current skips and scalars otherwise), no training.

    The stream below layer c is shared: one forward of the prefix, one partial forward from c per candidate.
    """
    base = base_model(model)
    layers = patched_layers(model)
    n_layers = len(layers)
    cand = set(candidates)
    sums = {c: 0.0 for c in candidates}
    weight = 0
    for i, batch in enumerate(batches):
        device = layers[0].input_layernorm.weight.device
        run = StackRun(base, input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device))
        stream = Stream(run.hidden)
        n = int(loss_positions(batch).sum())
        tokens = batch_tokens(batch)
        for c in range(n_layers):
            if c in cand:
                branch = stream.clone()
                layers[c].attn_skipped = True
                try:
                    hidden = run.run(branch, start=c)
                finally:
                    layers[c].attn_skipped = False
                loss = batch_loss(model, batch, objective, teacher[i] if teacher is not None else None, hidden=hidden)
                sums[c] += loss.item() * n
                counter.forward += tokens * (n_layers - c) / n_layers
            run.run_layer(layers[c], stream)
        counter.forward += tokens
        weight += n
    return {c: s / max(weight, 1) for c, s in sums.items()}


def _train_candidate(model, batches, chosen, c, step, *, objective, teacher, seed, lr, progress):
    reset_scalars(model)
    set_skips(model, attention=chosen + [c])
    work = PassCounter()
    t0 = time.perf_counter()
    losses = train_scalars(model, batches, objective=objective, epochs=1, lr=lr, seed=candidate_seed(seed, step, c),
                           teacher=teacher, counter=work, desc=f"step {step} candidate {c}", progress=progress)
    return {"loss": losses[-1], "passes": [work.forward, work.backward], "scalars": get_scalars(model).tolist(),
            "seconds": round(time.perf_counter() - t0, 2)}


def greedy_search(model: nn.Module, batches: list[dict], *, num_skip: int, fast: bool, objective: str,
                  state: SearchState, seed: int = 0, lr: float = 1e-2, teacher: list | None = None,
                  shortlist: int = 2, screen_fraction: float = 0.15, candidates: list[int] | None = None,
                  progress: bool = True) -> tuple[list[int], list[dict], PassCounter]:
    """Greedy choice of ``num_skip`` attention blocks; returns (chosen, step log, work done)."""
    n_layers = len(patched_layers(model))
    pool = list(range(n_layers)) if candidates is None else sorted(set(candidates))
    if num_skip > len(pool):
        raise ValueError(f"num_skip={num_skip} but only {len(pool)} attention blocks are candidates")
    gen = torch.Generator().manual_seed(seed)
    n_screen = max(1, round(screen_fraction * len(batches)))
    screen_batches = [batches[i] for i in sorted(torch.randperm(len(batches), generator=gen)[:n_screen].tolist())]
    screen_teacher = None
    if teacher is not None:
        idx = {id(b): i for i, b in enumerate(batches)}
        screen_teacher = [teacher[idx[id(b)]] for b in screen_batches]
    counter = PassCounter()
    chosen: list[int] = []
    log: list[dict] = []
    theta = torch.ones(n_layers, 4)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_skip, desc=f"hopscotch{' fast' if fast else ''} search")
    for step in range(num_skip):
        t0 = time.perf_counter()
        remaining = [c for c in pool if c not in chosen]
        entry = {"name": f"step{step}", "chosen_before": list(chosen)}
        if fast:
            rec = state.finished(f"step{step}/screen")
            if rec is None:
                set_skips(model, attention=chosen)
                set_scalars(model, theta)
                work, t1 = PassCounter(), time.perf_counter()
                scores = screen_candidates(model, screen_batches, remaining, objective=objective,
                                           teacher=screen_teacher, counter=work)
                rec = {"name": f"step{step}/screen", "scores": {str(c): v for c, v in scores.items()},
                       "passes": [work.forward, 0.0], "seconds": round(time.perf_counter() - t1, 2)}
                state.record(rec)
            counter.add_record(rec)
            screen = {int(c): v for c, v in rec["scores"].items()}
            entry["screen"] = {str(c): round(v, 6) for c, v in screen.items()}
            trained = sorted(remaining, key=lambda c: (screen[c], c))[:shortlist]
        else:
            trained = remaining
        results = {}
        for c in trained:
            rec = state.finished(f"step{step}/cand{c}")
            if rec is None:
                rec = {"name": f"step{step}/cand{c}", **_train_candidate(
                    model, batches, chosen, c, step, objective=objective, teacher=teacher, seed=seed, lr=lr,
                    progress=progress)}
                state.record(rec)
            counter.add_record(rec)
            results[c] = rec
        best = min(trained, key=lambda c: (results[c]["loss"], c))
        theta = torch.tensor(results[best]["scalars"])
        chosen.append(best)
        entry.update({"scores": {str(c): round(r["loss"], 6) for c, r in results.items()}, "picked": best,
                      "seconds": round(time.perf_counter() - t0, 2)})
        log.append(entry)
        if bar:
            bar.update()
            bar.set_postfix(picked=best, loss=f"{results[best]['loss']:.4f}")
    if bar:
        bar.close()
    return chosen, log, counter
