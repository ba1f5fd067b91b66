"""Each search method's run on a prepared search state: Hopscotch's greedy search and its final scalars, and the
similarity baselines (LLM-Drop, ShortGPT). ``search()`` (``__init__.py``) checks the input, opens the state and
calls one of these; each returns what the plan and its provenance need."""

from __future__ import annotations

import time

import torch
from torch import nn

from ..patch import is_patched, patch_model, reset_scalars, set_skips, unpatch_model
from ..patch.patcher import get_scalars
from .baselines import candidate_scores, drop_step, split_blocks
from .config import SearchConfig
from .distributed import LOCAL, Ranks
from .objectives import teacher_logprobs
from .runner import GreedyRunner
from .similarity import similarity_scores
from .state import SearchState
from .strategies import FaithfulStrategy, ScreenStrategy
from .train import PassCounter, TokenPassCost, batch_tokens, full_forward_passes, train_final_scalars

__all__ = ["run_hopscotch", "run_similarity", "TOKEN_PASS_UNIT"]

TOKEN_PASS_UNIT = ("one token forward through every layer and the LM head of the unpatched model, weighted by "
                   "weight FLOPs; backward = 2 forward")


def run_hopscotch(model: nn.Module, batches: list[dict], config: SearchConfig, state: SearchState, *,
                  generic: list[dict] | None, progress: bool, ranks: Ranks = LOCAL) -> tuple[list[int], torch.Tensor,
                                                                                              dict]:
    """The greedy search (faithful or fast) and the final scalars, candidates spread over ``ranks``; returns (chosen
    blocks, final scalars, the provenance entries)."""
    patch_model(model)
    set_skips(model)
    reset_scalars(model)
    teacher = teacher_logprobs(model, batches) if config.objective == "kl" else None
    runner = GreedyRunner(model, batches, state, config, teacher=teacher, progress=progress, ranks=ranks)
    if config.method == "hopscotch-fast":
        strategy = ScreenStrategy(runner)
    else:
        strategy = FaithfulStrategy(runner)
    log = runner.run(strategy, config.num_skip)
    counter = runner.counter
    if teacher is not None:  # the teacher's forward over the calibration data (once)
        counter.forward += full_forward_passes(runner.cost, batches)
    final = state.finished(f"final/k{config.num_skip}")
    if final is None:
        final = _final_scalars(runner, generic)
        # every rank trains them; rank 0's record is kept (and written)
        state.record(ranks.broadcast(final, "the final scalars"))
        final = state.finished(f"final/k{config.num_skip}")
    counter.add_record(final)
    prov = {"steps": log, "final_losses": final["losses"], "token_passes": counter.as_dict(),
            "search_seconds": round(counter.seconds, 2), "token_pass_unit": TOKEN_PASS_UNIT,
            "final_guard": {"settings": config.guard.as_dict(), "did": final.get("guard", {})}}
    return runner.chosen, torch.tensor(final["scalars"]), prov


def _final_scalars(runner: GreedyRunner, generic: list[dict] | None) -> dict:
    """The final scalars' training for the runner's chosen blocks, as a state record (what the guard did, when
    on)."""
    model, config = runner.model, runner.config
    work, t0, info = PassCounter(), time.perf_counter(), {}
    losses = train_final_scalars(model, runner.batches, runner.chosen, config, generic=generic, teacher=runner.teacher,
                                 counter=work, info=info, progress=runner.progress)
    record = {"name": f"final/k{config.num_skip}", "losses": losses, "scalars": get_scalars(model).tolist(),
              "passes": [work.forward, work.backward], "seconds": round(time.perf_counter() - t0, 2)}
    if not config.guard.off:
        record["guard"] = info
    return record


def run_similarity(model: nn.Module, batches: list[dict], config: SearchConfig, state: SearchState, *,
                   separate: bool, progress: bool) -> tuple[list[int], list[int], dict]:
    """LLM-Drop or ShortGPT on ``batches`` (``separate``: text batches apart from the calibration data), each step
    recorded (a resumed run replays them); returns (attention blocks, MLP blocks, the provenance entries)."""
    if is_patched(model):
        unpatch_model(model)
    target, iterative = config.skip_kind, config.iterative and config.method == "llm-drop"
    # every module still runs when scored (dropped ones are zeroed by hooks); no LM head
    score_passes = sum(batch_tokens(b) for b in batches) * TokenPassCost.of(model).layers(0)
    chosen: list[tuple[str, int]] = []
    log: list[dict] = []
    scores = None
    while len(chosen) < config.num_skip:
        name = f"{config.method.replace('-', '_')}_{len(log)}"  # llm_drop_0, shortgpt_0, ...
        entry = state.finished(name)
        if entry is None:
            passes = 0.0
            if scores is None or iterative:
                attn, mlp = split_blocks(chosen)
                scores = candidate_scores(similarity_scores(model, batches, dropped_attn=attn, dropped_mlp=mlp,
                                                            progress=progress), target)
                passes = score_passes
            entry = {**drop_step(scores, chosen, config.num_skip, iterative, name), "passes": passes}
            state.record(entry)
            entry = state.finished(entry["name"])
        chosen.extend((k, int(i)) for k, i in entry["picked"])
        log.append(entry)
    attn, mlp = split_blocks(chosen)
    passes = sum(s.get("passes", 0.0) for s in log)
    return attn, mlp, {"target": target, "iterative": iterative, "steps": log,
                       "similarity_data": "separate text batches" if separate else "calibration batches",
                       "similarity_tokens": sum(batch_tokens(b) for b in batches),
                       "token_passes": {"forward": round(passes), "backward": 0, "total": round(passes)}}
