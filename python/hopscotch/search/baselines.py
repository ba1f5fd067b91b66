"""The baselines: LLM-Drop (attention / MLP / block / joint drop, one-shot or iterative), ShortGPT and random.

LLM-Drop's and ShortGPT's steps are pure functions of the similarity scores (``similarity.py`` measures them;
``methods.py`` runs the steps, recording each, named for its method, with every score it looked at for the plan's
provenance).
"""

from __future__ import annotations

import random
from typing import Iterable

from .similarity import ModuleScores

__all__ = ["LLM_DROP_TARGETS", "candidate_scores", "drop_step", "rank_candidates", "select_random", "split_blocks"]

LLM_DROP_TARGETS = ("attn", "mlp", "block", "joint")


def rank_candidates(scores: dict[tuple[str, int], float], exclude: Iterable[tuple[str, int]] = ()) -> list:
    """Candidates ordered most similar (least important) first; ties broken by kind then index."""
    excluded = set(exclude)
    return sorted((k for k in scores if k not in excluded), key=lambda k: (-scores[k], k[0], k[1]))


def candidate_scores(s: ModuleScores, target: str) -> dict[tuple[str, int], float]:
    if target == "attn":
        return {("attn", i): v for i, v in enumerate(s.attn)}
    if target == "mlp":
        return {("mlp", i): v for i, v in enumerate(s.mlp)}
    if target == "block":
        return {("block", i): v for i, v in enumerate(s.block)}
    if target == "joint":  # attention and MLP blocks ranked together
        return {**{("attn", i): v for i, v in enumerate(s.attn)}, **{("mlp", i): v for i, v in enumerate(s.mlp)}}
    raise ValueError(f"unknown LLM-Drop target {target!r}; expected one of {', '.join(LLM_DROP_TARGETS)}")


def split_blocks(chosen: list[tuple[str, int]]) -> tuple[list[int], list[int]]:
    attn = sorted({i for k, i in chosen if k in ("attn", "block")})
    mlp = sorted({i for k, i in chosen if k in ("mlp", "block")})
    return attn, mlp


def drop_step(scores: dict[tuple[str, int], float], chosen: list[tuple[str, int]], num_skip: int,
              iterative: bool, name: str) -> dict:
    """The modules a similarity method (LLM-Drop, ShortGPT) drops at a step given ``scores`` (``candidate_scores``)
    and the modules already ``chosen``: the most similar one (iterative: rescored after each drop), or all
    ``num_skip`` at once (one-shot). Returns the step's log entry: its ``name``, the modules picked (``[kind,
    index]``) and every score."""
    ranked = rank_candidates(scores, exclude=chosen)
    if not ranked:
        raise ValueError(f"only {len(chosen)} modules can be dropped; num_skip={num_skip}")
    picks = ranked[:1] if iterative else ranked[: num_skip - len(chosen)]
    return {"name": name, "picked": [list(p) for p in picks],
            "scores": {f"{k}{i}": round(v, 6) for (k, i), v in scores.items()}}


def select_random(num_layers: int, num_skip: int, seed: int) -> list[int]:
    """``num_skip`` distinct attention blocks chosen uniformly at random (seeded)."""
    return sorted(random.Random(seed).sample(range(num_layers), num_skip))
