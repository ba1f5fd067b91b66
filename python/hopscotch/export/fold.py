"""Folding Hopscotch's scalars into ordinary weights.

With the true residual stream h_i = C_i * g_i (C_0 = 1), a kept attention block

    h1 = b_att * Attn(Norm(h)) + s_att * h

becomes, on the rescaled stream g, ``g1 = (b_att / C') * Attn(Norm(g)) + g`` with ``C' = C * s_att`` -- because
RMSNorm is invariant to a positive scale of its input (up to its eps: Norm(c x) = x / sqrt(mean(x^2) + eps/c^2)).
So ``b_att / C'`` multiplies o_proj, ``b_mlp / C''`` (``C'' = C' * s_mlp``) multiplies down_proj, and every
residual scalar disappears into the running product C. Every norm that reads the stream (the next block's input
norm, the final norm) sees g instead of h: the same up to eps. A skipped block leaves C unchanged.
"""

from __future__ import annotations

import torch

__all__ = ["FoldError", "output_scales"]


class FoldError(ValueError):
    """The scalars cannot be folded (a non-positive cumulative residual scale)."""


def output_scales(scalars: torch.Tensor, skipped_attention, skipped_mlp) -> tuple[list[float], list[float]]:
    """Per layer, the factor for o_proj and for down_proj (1.0 for skipped blocks, whose weights are not used).

    ``scalars``: [num_layers, 4] (b_att, s_att, b_mlp, s_mlp), float64 math.
    """
    skip_a, skip_m = set(skipped_attention), set(skipped_mlp)
    c = 1.0
    attn, mlp = [], []
    for i, (b_att, s_att, b_mlp, s_mlp) in enumerate(scalars.double().tolist()):
        for kind, skipped, b, s, out in (("attention", skip_a, b_att, s_att, attn), ("MLP", skip_m, b_mlp, s_mlp, mlp)):
            if i in skipped:
                out.append(1.0)
                continue
            c *= s
            if c <= 0:
                raise FoldError(f"the residual scale reaching {kind} block {i} is {c:.4g} (<= 0): RMSNorm is not "
                                "invariant to a sign flip, so these scalars cannot be folded into the weights")
            out.append(b / c)
    return attn, mlp
