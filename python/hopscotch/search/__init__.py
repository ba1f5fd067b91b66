"""search(): choose the blocks to skip, by Hopscotch (faithful or fast) or a baseline; returns a SkipPlan.

Methods:
  ``hopscotch``       the paper's greedy search (every candidate trained one epoch), then final scalars
  ``hopscotch-fast``  the same decision rule on an adaptive, budgeted shortlist (see ``greedy.py``), then final
                      scalars
  ``llm-drop``        LLM-Drop cosine-similarity drop; ``target`` attn | mlp | block | joint, one-shot or iterative
  ``shortgpt``        ShortGPT block influence (whole layers: attention and MLP), one-shot
  ``random``          seeded random attention blocks (a floor for the others)
The model is left patched with the returned plan applied.

LLM-Drop and ShortGPT score on ``similarity_batches`` when given (packed plain text, as their papers score C4:
``TaskData.text_calibration``), else on the calibration batches. Every method's provenance records its work in
token-passes (``train.py`` defines the unit) next to its wall time.
"""

from __future__ import annotations

import hashlib
import math
import os
import time

import torch
from torch import nn

from ..errors import check_arg
from ..limits import check_num_skip
from ..patch import apply_plan, is_patched, patch_model, reset_scalars, set_skips, unpatch_model
from ..patch.patcher import get_scalars
from ..plan import PlanError, SkipPlan, architecture_fingerprint
from .baselines import select_llm_drop, select_random
from .greedy import FastSettings, greedy_search, worst_case
from .objectives import OBJECTIVES, teacher_logprobs
from .similarity import similarity_scores
from .state import SearchState
from .train import (FINAL_SEED_OFFSET, PassCounter, TokenPassCost, batch_tokens, full_forward_passes,  # noqa: F401
                    rebatch, train_final_scalars)

__all__ = ["METHODS", "search", "data_digest", "FastSettings", "worst_case", "TokenPassCost", "train_final_scalars"]

METHODS = ("hopscotch", "hopscotch-fast", "llm-drop", "shortgpt", "random")


def data_digest(batches: list[dict]) -> str:
    """A short hash of the calibration batches (token ids and labels): the state file refuses other data."""
    h = hashlib.sha256()
    for b in batches:
        for key in ("input_ids", "attention_mask", "labels"):
            if key in b:
                h.update(b[key].cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _check(batches, method, objective, num_skip, n_layers):
    if method not in METHODS:
        raise ValueError(f"unknown search method {method!r}; expected one of {', '.join(METHODS)}")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")
    if not isinstance(num_skip, int) or not 0 <= num_skip <= n_layers:
        raise ValueError(f"num_skip={num_skip!r}; expected an integer between 0 and the layer count ({n_layers})")
    if not batches:
        raise ValueError("the calibration data holds no batches")
    for i, b in enumerate(batches):
        if not {"input_ids", "attention_mask", "labels"} <= set(b):
            raise ValueError(f"calibration batch {i} has keys {sorted(b)}; expected input_ids, attention_mask, labels")


_INTS = ("num_skip", "seed", "final_epochs", "shortlist", "max_shortlist", "refine", "first_finish", "pool",
         "challengers", "candidate_epochs")
_FLOATS = ("lr", "final_lr", "margin", "probe_fraction", "screen_fraction", "refine_fraction", "first_probe")


def _check_types(model, batches, args: dict) -> None:
    """search()'s argument types, each refused by name (values are checked by _check and the settings)."""
    check_arg(isinstance(model, nn.Module) and hasattr(model, "config"), "search", "model", model,
              "a loaded transformers causal LM")
    exported = getattr(model, "hopscotch_export", None)  # hopscotch.models marks a model loaded from an export
    if exported is not None:
        raise PlanError(f"search: the model is a {exported.describe()} ({exported.path}); search the original model")
    for name, value in (("batches", batches), ("similarity_batches", args["similarity_batches"])):
        if name == "similarity_batches" and value is None:
            continue
        check_arg(isinstance(value, (list, tuple)) and all(isinstance(b, dict) for b in value), "search", name,
                  value, "a list of dicts of tensors (input_ids, attention_mask, labels)")
    for name in ("method", "objective", "target", "strategy"):
        check_arg(isinstance(args[name], str), "search", name, args[name], "a string")
    for name in _INTS:
        check_arg(isinstance(args[name], int) and not isinstance(args[name], bool), "search", name, args[name],
                  "an integer")
    for name in _FLOATS + ("budget_ratio",):
        value = args[name]
        if name == "budget_ratio" and value is None:
            continue
        check_arg(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                  "search", name, value, "a finite number")
    for name in ("iterative", "progress"):
        check_arg(isinstance(args[name], bool), "search", name, args[name], "True or False")
    check_arg(args["state_path"] is None or isinstance(args["state_path"], (str, os.PathLike)), "search",
              "state_path", args["state_path"], "None or a path")


def search(model: nn.Module, batches: list[dict], *, method: str = "hopscotch-fast", num_skip: int = 4,
           objective: str = "nll", seed: int = 0, lr: float = 1e-2, final_lr: float = 3e-3, final_epochs: int = 3,
           final_batch_size: int | None = 1,
           target: str = "attn", iterative: bool = False, shortlist: int = 1, screen_fraction: float = 0.15,
           max_shortlist: int = 3, margin: float = 0.0125, probe_fraction: float = 1.0,
           budget_ratio: float | None = 8.0, refine: int = 10, refine_fraction: float = 0.15,
           strategy: str = "screen", first_probe: float = 0.125, first_finish: int = 3, pool: int = 6,
           challengers: int = 1,
           candidate_epochs: int = 1,
           similarity_batches: list[dict] | None = None,
           state_path: str | os.PathLike | None = None, data_info: dict | None = None,
           progress: bool = True) -> SkipPlan:
    """Search ``num_skip`` blocks to skip on calibration ``batches`` (dicts of input_ids, attention_mask, labels;
    labels -100 where no loss is taken); see the module docstring for the methods. ``state_path`` makes the search
    resumable: a killed search started again with the same arguments continues from its last finished step.

    The training budget of a Hopscotch candidate is ``candidate_epochs`` epochs over ``batches`` (the paper: 1);
    the batches' number and size are the calibration items and batch size. The final scalars are trained
    ``final_epochs`` epochs over the same rows re-batched to ``final_batch_size`` (None: as given): batch 1
    takes more Adam steps over the same tokens, which lowered SmolLM2's held-out loss significantly where more
    epochs did not (benchmarks/results/search_budget.txt). ``shortlist``, ``max_shortlist``,
    ``margin``, ``probe_fraction``, ``screen_fraction``, ``refine``, ``refine_fraction`` and ``budget_ratio``
    tune ``hopscotch-fast``'s screen strategy (``greedy.py``); ``strategy="lazy"`` carries trained losses from
    step to step instead (``lazy.py``: ``first_probe``, ``first_finish``, ``pool``, ``challengers``, and the
    screen and refine batches; no budget ledger: its cost is fixed by its settings)."""
    _check_types(model, batches, locals())
    base_cfg = model.config
    n_layers = base_cfg.num_hidden_layers
    _check(batches, method, objective, num_skip, n_layers)
    check_num_skip(num_skip, n_layers, "block" if method == "shortgpt" else target if method == "llm-drop" else "attn")
    if candidate_epochs < 1:
        raise ValueError(f"candidate_epochs={candidate_epochs}: expected 1 or more")
    if final_batch_size is not None and (not isinstance(final_batch_size, int) or final_batch_size < 1):
        raise ValueError(f"final_batch_size={final_batch_size!r}: expected a positive integer or None")
    fast = FastSettings(shortlist=shortlist, max_shortlist=max(max_shortlist, shortlist), margin=margin,
                        probe_fraction=probe_fraction, screen_fraction=screen_fraction, budget_ratio=budget_ratio,
                        refine=refine, refine_fraction=refine_fraction, strategy=strategy,
                        first_probe=first_probe, first_finish=first_finish, pool=pool, challengers=challengers)
    sim_batches = similarity_batches if similarity_batches else batches
    # A greedy step does not depend on num_skip: hopscotch states are shared by searches for any k.
    settings = {"method": method, "objective": objective, "seed": seed,
                "lr": lr, "final_lr": final_lr, "final_epochs": final_epochs, "final_batch_size": final_batch_size,
                "target": target,
                "iterative": iterative, "candidate_epochs": candidate_epochs,
                **({"fast": fast.as_dict()} if method == "hopscotch-fast" else {}),
                "model": architecture_fingerprint(model)["config_hash"], "data": data_digest(batches)}
    if method in ("llm-drop", "shortgpt"):
        settings["similarity_data"] = data_digest(sim_batches)
    if not method.startswith("hopscotch"):
        settings["num_skip"] = num_skip
    state = SearchState.open(state_path, settings)
    t0 = time.perf_counter()
    prov = {"method": method, "objective": objective, "seed": seed, "num_skip": num_skip,
            "data": data_info or {}, "data_digest": settings["data"],
            "calibration_tokens": sum(batch_tokens(b) for b in batches)}
    if method in ("llm-drop", "shortgpt"):
        attn, mlp, log = _similarity_method(model, sim_batches, method, target, iterative, num_skip, state, progress)
        passes = sum(s.get("passes", 0.0) for s in log)
        prov.update({"target": "block" if method == "shortgpt" else target,
                     "iterative": iterative and method == "llm-drop", "steps": log,
                     "similarity_data": "separate text batches" if similarity_batches else "calibration batches",
                     "similarity_tokens": sum(batch_tokens(b) for b in sim_batches),
                     "token_passes": {"forward": round(passes), "backward": 0, "total": round(passes)}})
        plan = SkipPlan.for_model(model, attn, mlp, **prov)
    elif method == "random":
        attn = select_random(n_layers, num_skip, seed)
        plan = SkipPlan.for_model(model, attn, **prov)
    else:
        plan = _hopscotch(model, batches, method, num_skip, objective, seed, lr, final_lr, final_epochs,
                          final_batch_size, fast, candidate_epochs, state, prov, progress)
    # This call's wall time (search_seconds, for hopscotch: the recorded work of the steps this plan used,
    # including steps an interrupted or a longer run recorded).
    plan.provenance["wall_seconds"] = round(time.perf_counter() - t0, 2)
    apply_plan(model, plan)
    return plan


def _similarity_method(model, batches, method, target, iterative, num_skip, state, progress):
    if is_patched(model):
        unpatch_model(model)
    resume = [s for s in state.steps if s.get("name", "").startswith("llm_drop_")]

    cost = TokenPassCost.of(model)
    tokens = sum(batch_tokens(b) for b in batches)
    pending = []

    def score(attn, mlp):
        # every module still runs (dropped ones are zeroed by hooks); no LM head
        pending.append(tokens * cost.layers(0))
        return similarity_scores(model, batches, dropped_attn=attn, dropped_mlp=mlp, progress=progress)

    def record(entry):
        entry["passes"] = pending.pop() if pending else 0.0
        state.record(entry)

    if method == "shortgpt":
        target, iterative = "block", False
    attn, mlp, log = select_llm_drop(score, num_skip, target, iterative, on_step=record, resume=resume)
    return attn, mlp, [state.finished(e["name"]) or e for e in log]


def _hopscotch(model, batches, method, num_skip, objective, seed, lr, final_lr, final_epochs, final_batch_size, fast,
               candidate_epochs, state, prov, progress) -> SkipPlan:
    patch_model(model)
    set_skips(model)
    reset_scalars(model)
    final_batches = batches if final_batch_size is None else rebatch(batches, final_batch_size)
    teacher = teacher_logprobs(model, batches) if objective == "kl" else None
    chosen, log, counter = greedy_search(model, batches, num_skip=num_skip, fast=method == "hopscotch-fast",
                                         objective=objective, state=state, seed=seed, lr=lr, teacher=teacher,
                                         fast_settings=fast, candidate_epochs=candidate_epochs,
                                         final_epochs=final_epochs, progress=progress)
    cost = TokenPassCost.of(model)

    if teacher is not None:  # the teacher's forward over the calibration data (once)
        counter.forward += full_forward_passes(cost, batches)
    final = state.finished(f"final/k{num_skip}")
    if final is None:
        work, t1 = PassCounter(), time.perf_counter()
        # the teacher is per batch: train_final_scalars recomputes it when the final batches differ
        losses = train_final_scalars(model, final_batches, chosen, objective=objective, epochs=final_epochs,
                                     lr=final_lr, seed=seed, counter=work, progress=progress,
                                     teacher=teacher if final_batches is batches else None)
        final = {"name": f"final/k{num_skip}", "losses": losses, "scalars": get_scalars(model).tolist(),
                 "passes": [work.forward, work.backward], "seconds": round(time.perf_counter() - t1, 2)}
        state.record(final)
    counter.add_record(final)
    prov.update({"steps": log, "final_losses": final["losses"], "token_passes": counter.as_dict(),
                 "search_seconds": round(counter.seconds, 2),
                 "token_pass_unit": "one token forward through every layer and the LM head of the unpatched model, "
                                    "weighted by weight FLOPs; backward = 2 forward",
                 "hyperparameters": {"lr": lr, "final_lr": final_lr, "final_epochs": final_epochs,
                                     "final_batch_size": final_batch_size,
                                     "candidate_epochs": candidate_epochs,
                                     **({"fast": fast.as_dict()} if method == "hopscotch-fast" else {})}})
    return SkipPlan.for_model(model, chosen, (), torch.tensor(final["scalars"]), **prov)
