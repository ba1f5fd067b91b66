"""How many blocks may be skipped: the one rule the search, ``set_skips``, plans and every export format use.

A skip set names attention and MLP blocks by layer index. It is valid when every index is an integer in
``0..num_layers-1``, none is listed twice, and at least one attention block and one MLP block remain: a model
without attention cannot read its context (each position sees only its own token), and one without MLPs has no
per-token computation left; neither is a thinner version of the model. ``hopscotch search --num-skip`` is bounded
by the same rule (``check_num_skip``). What an engine format can express on top of this (decilm for vLLM, gguf
for llama.cpp) is ``export.formats.format_problems``.

The only exception is ``allow_no_attention``: benchmarks time the model with every attention block skipped, as
the floor of attention's cost (``hopscotch bench --ks all``). Such a model is never a plan.
"""

from __future__ import annotations

from typing import Iterable

from .errors import PlanError, show_value

__all__ = ["SkipLimitError", "check_num_skip", "check_skip_lists", "max_num_skip"]

# (what the search's --target drops) -> how many modules one unit of num_skip removes from each kind
_TARGET_KINDS = {"attn": ("attention",), "mlp": ("mlp",), "block": ("attention", "mlp"), "joint": ("attention", "mlp")}


class SkipLimitError(PlanError):
    """A skip set outside the rule above (or a num_skip that would need one)."""


def check_skip_lists(attention: Iterable, mlp: Iterable, num_layers: int, *,
                     names: tuple[str, str] = ("skipped_attention", "skipped_mlp"),
                     allow_no_attention: bool = False) -> tuple[list[int], list[int]]:
    """The two lists, sorted, after checking them against the rule; SkipLimitError names the list and the value.

    ``names`` are how the caller calls the two lists in its messages (a plan's fields, ``set_skips``' arguments).
    """
    out = []
    for name, values in zip(names, (attention, mlp)):
        if values is None or isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
            raise SkipLimitError(f"{name} is {show_value(values)}; expected a list of integer block indices")
        idx = list(values)
        if any(isinstance(i, bool) or not hasattr(i, "__index__") for i in idx):
            raise SkipLimitError(f"{name} holds {idx!r}; expected a list of integer block indices")
        idx = [i.__index__() for i in idx]
        if len(set(idx)) != len(idx):
            dups = sorted({i for i in idx if idx.count(i) > 1})
            raise SkipLimitError(f"{name} lists blocks {dups} more than once")
        bad = [i for i in idx if not 0 <= i < num_layers]
        if bad:
            raise SkipLimitError(f"{name} holds {bad}, out of range for a model with {num_layers} layers "
                                 f"(0..{num_layers - 1})")
        out.append(sorted(idx))
    attn, mlp_idx = out
    if len(attn) >= num_layers and not allow_no_attention:
        raise SkipLimitError(f"{names[0]} skips all {num_layers} attention blocks; at most {num_layers - 1} may be "
                             "skipped (some attention must remain: without it no position reads its context)")
    if len(mlp_idx) >= num_layers:
        raise SkipLimitError(f"{names[1]} skips all {num_layers} MLP blocks; at most {num_layers - 1} may be "
                             "skipped (some MLP must remain)")
    return attn, mlp_idx


def max_num_skip(num_layers: int, target: str = "attn") -> int:
    """The most modules a search may drop on a model of ``num_layers`` layers: every attention (or MLP) block but
    one; ``joint`` ranks attention and MLP blocks together, so it may drop every one but one of each kind."""
    if target not in _TARGET_KINDS:
        raise SkipLimitError(f"unknown target {target!r}; expected one of {', '.join(_TARGET_KINDS)}")
    per_kind = num_layers - 1
    return 2 * per_kind if target == "joint" else per_kind


def check_num_skip(num_skip, num_layers: int, target: str = "attn", *, name: str = "num_skip") -> int:
    """``num_skip`` after checking it is an integer from 0 to ``max_num_skip``; the error names it as ``name``."""
    top = max_num_skip(num_layers, target)
    if isinstance(num_skip, bool) or not isinstance(num_skip, int):
        raise SkipLimitError(f"{name} {show_value(num_skip)}: expected an integer from 0 to {top}")
    if not 0 <= num_skip <= top:
        kinds = " and ".join(f"{k} block" for k in _TARGET_KINDS[target])
        raise SkipLimitError(f"{name} {num_skip}: expected 0 to {top} for a model with {num_layers} layers "
                             f"(at least one {kinds} must remain)")
    return num_skip
