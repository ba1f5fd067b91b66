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
   the faithful one by construction, whenever screening plus one candidate fits a step's allowance (for
   SmolLM2's 30 layers at the defaults it fits at every step; see ``worst_case``).

Steps 1-4 are ``screening.py``'s; this module holds the loop both searches share, the recorded helpers (train a
candidate, probe one, screen) and the settings. Every finished candidate, probe and step is written to the search
state before the next starts (docs/ARCHITECTURE.md §2.6); every decision depends only on recorded results, so a
resumed search reaches the same plan. Steps do not depend on ``num_skip``, so a state written by a search for k
blocks serves a later search for fewer or more.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from ..patch import SCALAR_NAMES, get_scalars, patched_layers, reset_scalars, set_scalars
from . import lazy
from .screening import ScreenSets, set_attention_skips, screen_candidates, screen_cost, screen_step, worst_case
from .state import SearchState
from .train import PassCounter, TokenPassCost, train_schedule

__all__ = ["greedy_search", "screen_candidates", "screen_cost", "candidate_seed", "step_schedule", "FastSettings",
           "worst_case", "STRATEGIES"]

STRATEGIES = ("screen", "lazy")  # the fast search's: a fresh screen each step (screening.py), or lazy.py's


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
    set_attention_skips(model, chosen + [c])
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
    sets = ScreenSets(batches, teacher, fs, seed=seed, cost=cost, final_epochs=final_epochs)
    counter = PassCounter()
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
                                 counter=counter, batches=sets.all_batches, teacher=sets.all_teacher)
        else:
            trained = screen_step(step, remaining, chosen, sets, fs, entry=entry, state=state, cost=cost,
                                  batches=batches, candidate_epochs=candidate_epochs, counter=counter,
                                  screened=screened, probe=probe, finish=finish)
        pick = min(trained, key=lambda c: (results[c]["loss"], c))
        theta = torch.tensor(results[pick]["scalars"])
        chosen.append(pick)
        set_attention_skips(model, chosen)
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
