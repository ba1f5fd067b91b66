"""Hopscotch's greedy search, faithful to the paper and fast.

Faithful (arXiv 2506.03303): at each step, for every attention block not yet chosen, reset all scalars to 1,
skip that block with those already chosen, train all scalars for one epoch (Adam, lr 1e-2) and score the
candidate by its mean training loss; skip the best; repeat to ``num_skip``. Every candidate of a step sees the
calibration batches in the same order (seeded by (seed, step)), so candidates differ only by the block they
skip, not by the luck of their data order.

Fast (ours): the same decision rule on an adaptive shortlist, under a work budget. This is the default *screen*
strategy; ``FastSettings(strategy="lazy")`` instead carries trained losses from step to step (``lazy.py``).

1. *Screen* every remaining candidate without training: one forward of a subset of the calibration data
   (``screen_fraction`` of the batches) with the scalars the previous step's winner learnt; the residual stream
   entering layer c is computed once and shared by every candidate c' >= c (a candidate changes nothing below
   itself).
2. *Refine*: the ``refine`` best-screened candidates are screened again on further batches (``refine_fraction``)
   and ranked by the position-weighted mean of both screens. One batch of a few items ranks candidates poorly
   (SmolLM2, arc_easy: rank correlation with the faithful step losses 0.74-0.87 on 4 items, 0.83-0.98 on all 32;
   a faithful winner ranked 10th on one batch and 2nd on two), and re-screening ten costs a third of screening
   thirty.
3. *Shortlist*: the ``shortlist`` best-ranked candidates, widened to every refined candidate whose score is within
   ``margin`` (relative) of the best one, at most ``max_shortlist``: near-ties are where screening is least
   trustworthy. The shortlist is trained exactly as the faithful search trains every candidate, and the best
   trained loss wins. (With ``probe_fraction`` < 1 a widened shortlist is instead *probed*: each member trained on
   the first ``probe_fraction`` of the step's shared batch order, the ``shortlist`` best probes finishing their
   training from where they stopped, which gives exactly the faithful loss. Off by default: on SmolLM2 a quarter
   epoch ranked last of three probes the candidate that finished best by 1.6%.) The fast search therefore picks
   what the faithful one picks whenever the faithful winner ranks into the shortlist.
4. *Budget*: the work (token-passes, screening included) spent up to the end of step s never exceeds
   ``1/budget_ratio`` of what the faithful search spends on steps 0..s (computed exactly: same data, same cost
   model), less a reserve for the final scalars (``final_epochs`` epochs of a search to ``budget_k`` blocks).
   The refinement and then the shortlist are narrowed (at worst to the single best-screened candidate) to stay
   inside it, so a search to ``budget_k`` blocks costs at least ``budget_ratio`` times fewer token-passes than
   the faithful one by construction, whenever screening plus one candidate fits a step's allowance (for SmolLM2's 30 layers
   at the defaults it fits at every step; see ``worst_case``).

Every finished candidate, probe and step is written to the search state before the next starts (docs/ARCHITECTURE.md §2.6);
every decision depends only on recorded results, so a resumed search reaches the same plan. Steps do not
depend on ``num_skip``, so a state written by a search for k blocks serves a later search for fewer or more.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from ..arch import base_model
from ..patch import SCALAR_NAMES, get_scalars, patched_layers, reset_scalars, set_scalars, set_skips
from ..patch.stack import StackRun, Stream
from . import lazy
from .objectives import batch_loss, loss_positions
from .state import SearchState
from .train import BACKWARD_FACTOR, PassCounter, TokenPassCost, batch_tokens, train_schedule

__all__ = ["greedy_search", "screen_candidates", "screen_cost", "candidate_seed", "step_schedule", "FastSettings",
           "worst_case", "STRATEGIES"]

STRATEGIES = ("screen", "lazy")  # the fast search's: a fresh screen each step (below), or lazy.py's


def candidate_seed(seed: int, step: int, candidate: int) -> int:
    return (seed * 1_000_003 + step * 1009 + candidate) % (2**31)


def step_schedule(seed: int, step: int, n_batches: int, epochs: int = 1) -> list[list[int]]:
    """The batch order of every candidate of step ``step``: seeded by (seed, step), never by the candidate."""
    gen = torch.Generator().manual_seed(candidate_seed(seed, step, 0x5EED))
    return [torch.randperm(n_batches, generator=gen).tolist() for _ in range(epochs)]


class FastSettings:
    """The fast search's knobs (see the module docstring)."""

    def __init__(self, shortlist: int = 1, max_shortlist: int = 3, margin: float = 0.0125, probe_fraction: float = 1.0,
                 screen_fraction: float = 0.15, budget_ratio: float | None = 8.0, budget_k: int = 8,
                 refine: int = 10, refine_fraction: float = 0.15, strategy: str = "screen",
                 first_probe: float = 0.125, first_finish: int = 3, pool: int = 6, challengers: int = 1):
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy={strategy!r}: expected one of {', '.join(STRATEGIES)}")
        if not 0 < first_probe <= 1 or first_finish < 1 or pool < 0 or challengers < 0:
            raise ValueError(f"first_probe={first_probe}, first_finish={first_finish}, pool={pool}, challengers="
                             f"{challengers}: expected first_probe in (0, 1], first_finish >= 1, pool >= 0 and "
                             "challengers >= 0")
        if shortlist < 1 or max_shortlist < shortlist:
            raise ValueError(f"shortlist={shortlist}, max_shortlist={max_shortlist}: expected 1 <= shortlist <= "
                             "max_shortlist")
        if not 0 < probe_fraction <= 1 or not 0 < screen_fraction <= 1 or margin < 0:
            raise ValueError("probe_fraction and screen_fraction must be in (0, 1] and margin >= 0")
        if refine < 0 or not 0 <= refine_fraction < 1:
            raise ValueError(f"refine={refine}, refine_fraction={refine_fraction}: expected refine >= 0 and "
                             "refine_fraction in [0, 1)")
        if budget_ratio is not None and budget_ratio <= 1:
            raise ValueError(f"budget_ratio={budget_ratio}: expected more than 1 (or None for no budget)")
        self.shortlist, self.max_shortlist, self.margin = shortlist, max_shortlist, margin
        self.probe_fraction, self.screen_fraction = probe_fraction, screen_fraction
        self.budget_ratio, self.budget_k = budget_ratio, budget_k
        self.refine, self.refine_fraction = refine, refine_fraction
        self.strategy, self.first_probe, self.first_finish = strategy, first_probe, first_finish
        self.pool, self.challengers = pool, challengers

    def as_dict(self) -> dict:
        """The settings that steer this strategy (a search state records them; the lazy strategy's own knobs
        only when it is chosen, so states written before it existed still match)."""
        out = dict(self.__dict__)
        if self.strategy == "screen":
            for key in ("strategy", "first_probe", "first_finish", "pool", "challengers"):
                out.pop(key)
        return out


def _set_skips(model, attention) -> None:
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
    _set_skips(model, chosen)
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
                    _set_skips(model, chosen + [c])
                    try:
                        hidden = run.run(branch, start=c)
                    finally:
                        _set_skips(model, chosen)
                    loss = batch_loss(model, batch, objective, teacher[i] if teacher is not None else None,
                                      hidden=hidden)
                    sums[c] += loss.item() * n
                layers[c](stream, run)
            counter.forward += screen_cost(cost, [batch], candidates, chosen)[0]
            weight += n
    finally:
        _set_skips(model, chosen)
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


# ---- optimizer state <-> JSON (probed candidates are finished later, possibly by a resumed run) ------------

def _state_to_json(state: dict) -> dict:
    def enc(v):
        if isinstance(v, torch.Tensor):
            return {"__tensor__": v.detach().cpu().reshape(-1).tolist(), "shape": list(v.shape),
                    "dtype": str(v.dtype).removeprefix("torch.")}
        if isinstance(v, dict):
            return {str(k): enc(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [enc(x) for x in v]
        return v
    return {"state": {str(k): enc(v) for k, v in state["state"].items()}, "param_groups": enc(state["param_groups"])}


def _state_from_json(data: dict) -> dict:
    def dec(v):
        if isinstance(v, dict) and "__tensor__" in v:
            return torch.tensor(v["__tensor__"], dtype=getattr(torch, v["dtype"])).reshape(v["shape"])
        if isinstance(v, dict):
            return {k: dec(x) for k, x in v.items()}
        if isinstance(v, list):
            return [dec(x) for x in v]
        return v
    return {"state": {int(k): dec(v) for k, v in data["state"].items()}, "param_groups": dec(data["param_groups"])}


def _last_epoch_loss(sums: list[list[float]]) -> float:
    _, s, w = max(sums, key=lambda x: x[0])
    return s / max(w, 1)


def _merge(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    out: dict[int, list[float]] = {}
    for e, s, w in list(a) + list(b):
        acc = out.setdefault(int(e), [0.0, 0.0])
        acc[0] += s
        acc[1] += w
    return [[e, v[0], v[1]] for e, v in sorted(out.items())]


def _train(model, batches, chosen, c, schedule, *, start, stop, objective, teacher, lr, cost, state_in=None,
           desc=None, progress=False):
    """Train candidate ``c`` over schedule positions start:stop (fresh scalars and optimizer when start == 0)."""
    _set_skips(model, chosen + [c])
    if state_in is None:
        reset_scalars(model)
        opt_state = None
    else:
        set_scalars(model, torch.tensor(state_in["scalars"]))
        opt_state = _state_from_json(state_in["adam"])
    work = PassCounter()
    t0 = time.perf_counter()
    sums, opt = train_schedule(model, batches, schedule, objective=objective, lr=lr, start=start, stop=stop,
                               teacher=teacher, optimizer_state=opt_state, counter=work, cost=cost, desc=desc,
                               progress=progress)
    return {"sums": sums, "passes": [work.forward, work.backward], "scalars": get_scalars(model).tolist(),
            "seconds": round(time.perf_counter() - t0, 2)}, opt


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


def greedy_search(model: nn.Module, batches: list[dict], *, num_skip: int, fast: bool, objective: str,
                  state: SearchState, seed: int = 0, lr: float = 1e-2, teacher: list | None = None,
                  shortlist: int = 1, screen_fraction: float = 0.15, candidates: list[int] | None = None,
                  progress: bool = True, fast_settings: FastSettings | None = None, candidate_epochs: int = 1,
                  final_epochs: int = 3) -> tuple[list[int], list[dict], PassCounter]:
    """Greedy choice of ``num_skip`` attention blocks; returns (chosen, step log, work done)."""
    fs = fast_settings or FastSettings(shortlist=shortlist, screen_fraction=screen_fraction)
    n_layers = len(patched_layers(model))
    n_scalars = len(SCALAR_NAMES)
    cost = TokenPassCost.of(model)
    pool = list(range(n_layers)) if candidates is None else sorted(set(candidates))
    if num_skip > len(pool):
        raise ValueError(f"num_skip={num_skip} but only {len(pool)} attention blocks are candidates")
    nb = len(batches)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(nb, generator=gen).tolist()
    n_screen = max(1, round(fs.screen_fraction * nb))
    n_refine = min(nb - n_screen, round(fs.refine_fraction * nb)) if fs.refine else 0
    screen_idx, refine_idx = sorted(perm[:n_screen]), sorted(perm[n_screen:n_screen + n_refine])
    screen_batches = [batches[i] for i in screen_idx]
    refine_batches = [batches[i] for i in refine_idx]
    screen_teacher = refine_teacher = None
    if teacher is not None:
        screen_teacher = [teacher[i] for i in screen_idx]
        refine_teacher = [teacher[i] for i in refine_idx]
    # loss positions of each screening set: the refined score is their position-weighted mean
    w_screen = sum(int(loss_positions(b).sum()) for b in screen_batches)
    w_refine = sum(int(loss_positions(b).sum()) for b in refine_batches)
    n_probe = max(1, round(fs.probe_fraction * nb))
    counter = PassCounter()
    allowance = 0.0
    reserve = 0.0
    if fs.budget_ratio:
        reserve = final_epochs * cost.epoch(batches) * (1 - 1 / fs.budget_ratio) / fs.budget_k
    chosen: list[int] = []
    log: list[dict] = []
    theta = torch.ones(n_layers, n_scalars)
    ratios: dict[int, float] = {}  # the lazy strategy's latest ratio of every candidate (lazy.py)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_skip, desc=f"hopscotch{' fast' if fast else ''} search")
    for step in range(num_skip):
        t0 = time.perf_counter()
        remaining = [c for c in pool if c not in chosen]
        schedule = step_schedule(seed, step, nb, candidate_epochs)
        total_positions = nb * candidate_epochs
        entry = {"name": f"step{step}", "chosen_before": list(chosen)}
        kw = dict(objective=objective, teacher=teacher, lr=lr, cost=cost, progress=progress)
        results: dict[int, dict] = {}

        def finish(c, start=0, state_in=None):
            rec = state.finished(f"step{step}/cand{c}")
            if rec is None:
                out, _ = _train(model, batches, chosen, c, schedule, start=start, stop=total_positions,
                                state_in=state_in, desc=f"step {step} candidate {c}", **kw)
                sums = _merge(state_in["sums"], out["sums"]) if state_in is not None else out["sums"]
                rec = {"name": f"step{step}/cand{c}", **out, "sums": sums, "loss": _last_epoch_loss(sums)}
                state.record(rec)
            counter.add_record(rec)
            results[c] = rec

        def probe(c, stop):
            """Candidate c trained on schedule positions 0:stop from fresh scalars, recorded with its optimizer."""
            rec = state.finished(f"step{step}/probe{c}")
            if rec is None:
                out, opt = _train(model, batches, chosen, c, schedule, start=0, stop=stop,
                                  desc=f"step {step} probe {c}", **kw)
                rec = {"name": f"step{step}/probe{c}", **out, "adam": _state_to_json(opt),
                       "loss": _last_epoch_loss(out["sums"])}
                state.record(rec)
            counter.add_record(rec)
            return rec

        def screened(name, on, candidates_, teacher_):
            """Screening ``candidates_`` on batches ``on`` (at the previous winner's scalars), recorded."""
            rec = state.finished(name)
            if rec is None:
                set_scalars(model, theta)
                work, t1 = PassCounter(), time.perf_counter()
                scores = screen_candidates(model, on, candidates_, objective=objective, teacher=teacher_,
                                           counter=work, chosen=chosen, cost=cost)
                rec = {"name": name, "scores": {str(c): v for c, v in scores.items()},
                       "passes": [work.forward, 0.0], "seconds": round(time.perf_counter() - t1, 2)}
                state.record(rec)
            return rec

        if not fast:
            for c in remaining:
                finish(c)
            trained = remaining
        elif fs.strategy == "lazy":
            trained = _lazy_step(step, remaining, fs, ratios, entry, results, finish, probe, screened,
                                 n_first=max(1, round(fs.first_probe * total_positions)), total=total_positions,
                                 counter=counter, batches=screen_batches + refine_batches,
                                 teacher=None if teacher is None else screen_teacher + refine_teacher)
        else:
            rec = screened(f"step{step}/screen", screen_batches, remaining, screen_teacher)
            counter.add_record(rec)
            screen = {int(c): v for c, v in rec["scores"].items()}
            entry["screen"] = {str(c): round(v, 6) for c, v in screen.items()}
            ranked = sorted(remaining, key=lambda c: (screen[c], c))
            finalists_n = min(fs.shortlist, len(ranked))
            # the budget: what this step may still spend (faithful work of steps 0..step / ratio, less reserve)
            one = max(cost.epoch(batches, chosen + [c]) for c in remaining) * candidate_epochs
            p = n_probe / total_positions
            avail = float("inf")
            if fs.budget_ratio:
                faithful_step = sum(cost.epoch(batches, chosen + [c]) for c in remaining) * candidate_epochs
                allowance += faithful_step / fs.budget_ratio - reserve
                avail = allowance - counter.total
            # refine: the best-screened candidates screened again on further batches (one batch of a few items
            # ranks candidates poorly; the position-weighted mean over both sets ranks them better), as many as
            # the budget allows while the finalists' training still fits
            n_ref = min(fs.refine, len(ranked)) if refine_batches else 0
            rec = state.finished(f"step{step}/refine")
            if rec is None and n_ref > finalists_n:
                def refine_cost(n):
                    return sum(screen_cost(cost, refine_batches, ranked[:n], chosen))

                while n_ref > finalists_n and refine_cost(n_ref) + finalists_n * one > avail:
                    n_ref -= 1
                if n_ref > finalists_n:
                    rec = screened(f"step{step}/refine", refine_batches, ranked[:n_ref], refine_teacher)
            if rec is not None:
                counter.add_record(rec)
                avail -= rec["passes"][0]
                again = {int(c): v for c, v in rec["scores"].items()}
                entry["refine"] = {str(c): round(v, 6) for c, v in again.items()}
                screen = {c: (screen[c] * w_screen + again[c] * w_refine) / max(w_screen + w_refine, 1)
                          if c in again else screen[c] for c in screen}
                refined = sorted(again, key=lambda c: (screen[c], c))
                ranked = refined + [c for c in ranked if c not in again]
            else:
                refined = ranked
            # near-ties widen the shortlist (scores of the same data only: the refined ones when refined)
            best = screen[ranked[0]]
            close = [c for c in refined if screen[c] - best <= fs.margin * abs(best)]
            width = min(max(finalists_n, len(close)), fs.max_shortlist, len(ranked))
            probing = n_probe < total_positions
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
                probes = {c: probe(c, n_probe) for c in probed}
                entry["probe"] = {str(c): round(r["loss"], 6) for c, r in probes.items()}
                trained = sorted(probed, key=lambda c: (probes[c]["loss"], c))[:finalists_n]
                for c in trained:
                    finish(c, start=n_probe, state_in=probes[c])
            else:
                trained = ranked[:finalists_n]
                for c in trained:
                    finish(c)
            entry["shortlist"] = {"close": len(close), "width": width, "finalists": len(trained)}
        pick = min(trained, key=lambda c: (results[c]["loss"], c))
        theta = torch.tensor(results[pick]["scalars"])
        chosen.append(pick)
        _set_skips(model, chosen)
        entry.update({"scores": {str(c): round(results[c]["loss"], 6) for c in trained}, "picked": pick,
                      "passes_so_far": round(counter.total), "seconds": round(time.perf_counter() - t0, 2)})
        log.append(entry)
        if bar:
            bar.update()
            bar.set_postfix(picked=pick, loss=f"{results[pick]['loss']:.4f}")
    if bar:
        bar.close()
    return chosen, log, counter


def _lazy_step(step, remaining, fs, ratios, entry, results, finish, probe, screened, *, n_first, total, counter,
               batches, teacher) -> list[int]:
    """One step of the lazy strategy (lazy.py) on greedy_search's recorded helpers; returns the trained ones."""
    if step == 0:  # a resumed search replays the recorded probes, so ``ratios`` is rebuilt the same way
        probes = {}

        def probe_loss(c):
            probes[c] = probe(c, n_first)
            return probes[c]["loss"]

        def finish_probe(c):
            if n_first >= total:  # the probe was the whole epoch
                results[c] = {**probes[c], "name": f"step{step}/cand{c}"}
            else:
                finish(c, start=n_first, state_in=probes[c])
            return results[c]["loss"]

        trained = lazy.first_step(remaining, probe=probe_loss, finish_probe=finish_probe,
                                  finishers=fs.first_finish, ratios=ratios)
        entry["probe"] = {str(c): round(r["loss"], 6) for c, r in probes.items()}
        return trained

    def screen(cs):
        rec = screened(f"step{step}/screen", batches, cs, teacher)
        counter.add_record(rec)
        return {int(c): v for c, v in rec["scores"].items()}

    def train(c):
        finish(c)
        return results[c]["loss"]

    done = lazy.later_step(remaining, ratios=ratios, pool=fs.pool, challengers=fs.challengers, screen=screen,
                           train=train)
    entry["lazy"] = {"incumbent": done["incumbent"], "challengers": done["challengers"],
                     "screen": {str(c): round(v, 6) for c, v in done["screen"].items()}}
    return done["trained"]
