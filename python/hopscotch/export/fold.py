"""Folding Hopscotch's scalars into ordinary weights.

With the true residual stream h_i = C_i * g_i (C_0 = 1), a kept attention block

    h1 = b_att * Attn(Norm(h)) + s_att * h

becomes, on the rescaled stream g, ``g1 = (b_att / C') * Attn(Norm(g)) + g`` with ``C' = C * s_att`` -- because
RMSNorm is invariant to a positive scale of its input (up to its eps: Norm(c x) = x / sqrt(mean(x^2) + eps/c^2)).
So ``b_att / C'`` multiplies o_proj, ``b_mlp / C''`` (``C'' = C' * s_mlp``) multiplies down_proj, and every
residual scalar disappears into the running product C. Every norm that reads the stream (the next block's input
norm, the final norm) sees g instead of h. A skipped block leaves C unchanged.

The eps: a norm reading g = h / C computes g / sqrt(mean(g^2) + eps') = h / sqrt(mean(h^2) + C^2 eps'), which is
the original norm of h exactly when eps' = eps / C^2. ``norm_eps`` gives that eps per norm (the hopscotch format
writes it: exact). A format with one eps for every norm (vanilla, decilm, gguf) keeps the original eps, so the norm reading a
stream of scale C computes as if its eps were eps * C^2: its output changes by about eps |C^2 - 1| / (2 mean(h^2))
relative. Learned scalars keep C near 1 (a learned SmolLM2 plan: max logit difference ~1e-4); ``stream_scale_range``
gives the C's so a writer can warn when they are far from 1. (A single eps other than the original is worse in
practice: the early layers, where C is still ~1 and mean(h^2) is smallest, are the sensitive ones.)

Sandwich norms (Gemma 3): a block's output passes its own post-block norm before it joins the stream, and a norm
undoes any scale of its input, so the factor cannot go on o_proj / down_proj: it goes on the post-block norm's gain
instead, which Gemma stores as ``w`` for a gain of ``1 + w``: ``w' = factor * (1 + w) - 1`` (a skipped block's
factor 0 gives ``w' = -1``, a zero output). Its stream-reading norms are the pre-block ones (``arch.NormLayout``).

Weights are named as in the HF model: ``weight_scale_key`` says which tensors a block's scalar folds into,
``skipped_weight`` which belong to a skipped block (the formats that leave them out, and the loader, use it).
"""

from __future__ import annotations

import re

import torch

from ..arch import NormLayout, norm_layout
from ..errors import ExportError
from ..plan import SCALAR_NAMES

__all__ = ["FoldError", "base_state_dict", "fold_tensor", "folded_weights", "norm_eps", "output_scales",
           "plan_norms", "skipped_weight", "stream_scale_range", "weight_factor", "weight_scale_key"]

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")


def plan_norms(plan) -> NormLayout:
    """Where the norms of the plan's model family are (``arch.norm_layout`` of its fingerprint's model_type)."""
    return norm_layout((plan.fingerprint or {}).get("model_type") or "llama")


def _block_parts(norms: NormLayout) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Prefixes of the weights that belong to an attention block / an MLP block (its norms included)."""
    return (("self_attn.",) + tuple(n + "." for n in norms.attention_norms()),
            ("mlp.",) + tuple(n + "." for n in norms.mlp_norms()))


class FoldError(ExportError):
    """The scalars cannot be folded (a non-positive cumulative residual scale): an ExportError like every refusal of
    an export."""


def _walk(scalars: torch.Tensor, skipped_attention, skipped_mlp):
    """Per layer ``(C reaching the attention block, its output factor, C reaching the MLP block, its factor)``
    and the C reaching the final norm."""
    skip_a, skip_m = set(skipped_attention), set(skipped_mlp)
    c = 1.0
    rows = []
    for i, (b_att, s_att, b_mlp, s_mlp) in enumerate(scalars.double().tolist()):
        row = []
        for kind, skipped, b, s in (("attention", skip_a, b_att, s_att), ("MLP", skip_m, b_mlp, s_mlp)):
            c_in = c
            if i in skipped:
                row += [c_in, 1.0]
                continue
            c *= s
            if c <= 0:
                raise FoldError(f"the residual scale reaching {kind} block {i} is {c:.4g} (<= 0): RMSNorm is not "
                                "invariant to a sign flip, so these scalars cannot be folded into the weights")
            row += [c_in, b / c]
        rows.append(row)
    return rows, c


def output_scales(scalars: torch.Tensor, skipped_attention, skipped_mlp) -> tuple[list[float], list[float]]:
    """Per layer, the factor for o_proj and for down_proj (1.0 for skipped blocks, whose weights are not used).

    ``scalars``: [num_layers, 4] (b_att, s_att, b_mlp, s_mlp), float64 math.
    """
    rows, _ = _walk(scalars, skipped_attention, skipped_mlp)
    return [r[1] for r in rows], [r[3] for r in rows]


def norm_eps(plan, eps: float) -> dict:
    """The eps each stream-reading norm needs on the folded model to compute exactly what the patched model does:
    ``{"input_layernorm": [per layer], "post_attention_layernorm": [per layer], "norm": final}`` (the pre-block
    norms' names: Gemma's MLP reads the stream through ``pre_feedforward_layernorm``)."""
    rows, c_final = _walk(plan.scalar_tensor(), plan.skipped_attention, plan.skipped_mlp)
    norms = plan_norms(plan)
    return {norms.attn_pre: [eps / r[0] ** 2 for r in rows],
            norms.mlp_pre: [eps / r[2] ** 2 for r in rows], "norm": eps / c_final ** 2}


def stream_scale_range(plan) -> tuple[float, float]:
    """The smallest and largest residual scale C reaching a norm that the folded model runs (the kept blocks'
    norms and the final norm)."""
    rows, c_final = _walk(plan.scalar_tensor(), plan.skipped_attention, plan.skipped_mlp)
    cs = [c_final] + [r[0] for i, r in enumerate(rows) if i not in plan.skipped_attention]
    cs += [r[2] for i, r in enumerate(rows) if i not in plan.skipped_mlp]
    return min(cs), max(cs)


def _layer_part(name: str) -> tuple[int | None, str]:
    m = _LAYER.search(name)
    return (int(m.group(1)), m.group(2)) if m else (None, name)


def skipped_weight(name: str, plan) -> bool:
    """True for the weights of a skipped block (not written by the hopscotch and decilm formats)."""
    layer, part = _layer_part(name)
    if layer is None:
        return False
    attn_parts, mlp_parts = _block_parts(plan_norms(plan))
    return (layer in plan.skipped_attention and part.startswith(attn_parts)) or \
        (layer in plan.skipped_mlp and part.startswith(mlp_parts))


def weight_scale_key(name: str, norms: NormLayout = NormLayout()) -> tuple[int | None, str | None]:
    """(layer, "attn") / (layer, "mlp"): the tensors a block's scalars fold into -- o_proj / down_proj (weight and
    bias), or a sandwich-norm family's post-block norm (``norms.attn_post`` / ``mlp_post``)."""
    layer, part = _layer_part(name)
    if layer is None:
        return None, None
    attn, mlp = ((norms.attn_post + ".", norms.mlp_post + ".") if norms.attn_post and norms.mlp_post
                 else ("self_attn.o_proj.", "mlp.down_proj."))
    if part.startswith(attn):
        return layer, "attn"
    if part.startswith(mlp):
        return layer, "mlp"
    return None, None


def weight_factor(name: str, plan, scales: tuple[list[float], list[float]]) -> float | None:
    """What the plan multiplies the HF weight ``name`` by: the block's output factor for o_proj / down_proj
    (``scales`` = ``output_scales(...)``), 0.0 for a skipped block's, None for every other weight (unchanged)."""
    layer, kind = weight_scale_key(name, plan_norms(plan))
    if kind is None:
        return None
    if layer in (plan.skipped_attention if kind == "attn" else plan.skipped_mlp):
        return 0.0
    return scales[0 if kind == "attn" else 1][layer]


def base_state_dict(model) -> dict[str, torch.Tensor]:
    """The HF model's own tensors (no hopscotch scalars), with tied weights named once."""
    from ..arch import causal_lm

    lm = causal_lm(model)
    sd = {k: v for k, v in lm.state_dict().items() if k.rsplit(".", 1)[-1] not in SCALAR_NAMES}
    if getattr(lm.config, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)
    return sd


def folded_weights(model, plan, *, keep_skipped: bool = False):
    """``(tensors, materialize)``: the model's tensors by HF name (the skipped blocks' left out unless
    ``keep_skipped``) and ``materialize(name, dtype=None)``, which returns one tensor on the CPU with the plan's
    scalars folded in (a kept skipped block's output projection is zeroed). Tensors are folded one at a time, so
    an export never holds a second copy of the whole model."""
    scales = output_scales(plan.scalar_tensor(), plan.skipped_attention, plan.skipped_mlp)
    sd = base_state_dict(model)
    if not keep_skipped:
        sd = {k: v for k, v in sd.items() if not skipped_weight(k, plan)}

    unit_gain = plan_norms(plan).attn_post is not None  # the post-block norms' gain is 1 + w (Gemma)

    def materialize(name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        t = sd[name].detach()
        return fold_tensor(t, weight_factor(name, plan, scales), dtype or t.dtype, unit_gain)

    return sd, materialize


def fold_tensor(t: torch.Tensor, factor: float | None, dtype: torch.dtype, unit_gain: bool = False) -> torch.Tensor:
    """``t`` (on the CPU, as ``dtype``) with ``factor`` folded in: ``t * factor``, or for a norm whose gain is
    ``1 + t`` (``unit_gain``) the ``t'`` with ``1 + t' = factor * (1 + t)``; None: unchanged."""
    if factor is None or factor == 1.0:
        return t.to(device="cpu", dtype=dtype).contiguous().clone()
    if unit_gain:
        return ((1.0 + t.double()) * factor - 1.0).to(dtype).contiguous()
    if factor == 0.0:
        return torch.zeros(t.shape, dtype=dtype)
    return (t.double() * factor).to(dtype).contiguous()
