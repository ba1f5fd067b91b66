"""The baselines: LLM-Drop (attention / MLP / block / joint drop, one-shot or iterative), ShortGPT and random.

Each selector returns ``(skipped_attn, skipped_mlp, log)`` where ``log`` records every score it looked at, in
the order it looked, for the plan's provenance.
"""

from __future__ import annotations

import random
from typing import Callable, Iterable

from .similarity import ModuleScores

__all__ = ["LLM_DROP_TARGETS", "select_llm_drop", "select_random", "rank_candidates"]

LLM_DROP_TARGETS = ("attn", "mlp", "block", "joint")


def rank_candidates(scores: dict[tuple[str, int], float], exclude: Iterable[tuple[str, int]] = ()) -> list:
    """Candidates ordered most similar (least important) first; ties broken by kind then index."""
    excluded = set(exclude)
    return sorted((k for k in scores if k not in excluded), key=lambda k: (-scores[k], k[0], k[1]))


def _candidates(s: ModuleScores, target: str) -> dict[tuple[str, int], float]:
    if target == "attn":
        return {("attn", i): v for i, v in enumerate(s.attn)}
    if target == "mlp":
        return {("mlp", i): v for i, v in enumerate(s.mlp)}
    if target == "block":
        return {("block", i): v for i, v in enumerate(s.block)}
    if target == "joint":  # attention and MLP blocks ranked together
        return {**{("attn", i): v for i, v in enumerate(s.attn)}, **{("mlp", i): v for i, v in enumerate(s.mlp)}}
    raise ValueError(f"unknown LLM-Drop target {target!r}; expected one of {', '.join(LLM_DROP_TARGETS)}")


def _split(chosen: list[tuple[str, int]]) -> tuple[list[int], list[int]]:
    attn = sorted({i for k, i in chosen if k in ("attn", "block")})
    mlp = sorted({i for k, i in chosen if k in ("mlp", "block")})
    return attn, mlp


def select_llm_drop(score_fn: Callable[[list[int], list[int]], ModuleScores], num_skip: int, target: str,
                    iterative: bool, on_step: Callable[[dict], None] | None = None,
                    resume: list[dict] | None = None) -> tuple[list[int], list[int], list[dict]]:
    """Drop ``num_skip`` modules of kind ``target`` by LLM-Drop similarity.

    ``score_fn(dropped_attn, dropped_mlp)`` measures the scores with those modules already identities.
    One-shot scores once and drops the top ``num_skip``; iterative rescores after each drop. ``resume`` holds the
    steps of an interrupted run (as passed to ``on_step``), which are replayed instead of recomputed.
    """
    if target not in LLM_DROP_TARGETS:
        raise ValueError(f"unknown LLM-Drop target {target!r}; expected one of {', '.join(LLM_DROP_TARGETS)}")
    chosen: list[tuple[str, int]] = []
    log: list[dict] = []
    resume = list(resume or [])
    scores = None
    while len(chosen) < num_skip:
        step = len(log)
        if step < len(resume):
            entry = resume[step]
        else:
            if scores is None or iterative:
                attn, mlp = _split(chosen)
                scores = _candidates(score_fn(attn, mlp), target)
            ranked = rank_candidates(scores, exclude=chosen)
            if not ranked:
                raise ValueError(f"only {len(chosen)} {target} modules can be dropped; num_skip={num_skip}")
            picks = ranked[:1] if iterative else ranked[: num_skip - len(chosen)]
            entry = {"name": f"llm_drop_{step}", "picked": [list(p) for p in picks],
                     "scores": {f"{k}{i}": round(v, 6) for (k, i), v in scores.items()}}
            if on_step:
                on_step(entry)
        chosen.extend((k, int(i)) for k, i in entry["picked"])
        log.append(entry)
    attn, mlp = _split(chosen)
    return attn, mlp, log


def select_random(num_layers: int, num_skip: int, seed: int, exclude: Iterable[int] = ()) -> list[int]:
    """``num_skip`` distinct attention blocks chosen uniformly at random (seeded)."""
    pool = [i for i in range(num_layers) if i not in set(exclude)]
    if num_skip > len(pool):
        raise ValueError(f"num_skip={num_skip} but only {len(pool)} attention blocks can be skipped")
    return sorted(random.Random(seed).sample(pool, num_skip))
