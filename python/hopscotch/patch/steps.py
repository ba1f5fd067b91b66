"""What a kept attention block does with its keys and values in one forward: the interface the layer knows.

A forward makes one *step* (``StackRun``) and every kept attention block calls ``step.attend(layer, q, k, v)`` with
its projected, unrotated q [B, T, Hq, D] and k, v [B, T, Hkv, D]; the step rotates them, keeps the keys and values
where its cache wants them, and returns the attention output [B, T, Hq, D]. Three steps share that interface:

* ``cache_step.CacheStep``: the model's own ``HopscotchCache`` (inference; one kernel rotates and writes the slots);
* ``UncachedStep`` (here): no cache, the keys are this forward's (search, training, ``use_cache=False``);
* ``hf_cache.TransformersCacheStep``: a transformers cache the caller brought, adapted at the edge.

Each asks ``masks.py`` for its masks; the layer never branches on which step it has.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import masks

__all__ = ["UncachedStep", "padding_of", "sdpa"]


def padding_of(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """A 2-D attention mask that pads something, or None (one host sync, as transformers' mask helpers make)."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; the patched model takes a 2-D "
                         "[batch, length] padding mask (1 = token, 0 = padding)")
    return None if bool(attention_mask.all()) else attention_mask


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: masks.MaskPlan, scaling: float,
         dropout: float = 0.0) -> torch.Tensor:
    """Attention of q [B, Hq, T, D] over k, v [B, Hkv, S, D] under ``plan``; returns [B, T, Hq, D], contiguous.

    Without a mask SDPA handles GQA natively; with one, K and V are repeated per query head (the kernels that take a
    mask do not take ``enable_gqa``). This is what transformers' SDPA attention computes, operation for operation,
    so an uncached patched forward gives the unpatched model's numbers."""
    mask, causal = plan
    if mask is None:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=causal and q.shape[2] > 1,
                                             scale=scaling, enable_gqa=k.shape[1] != q.shape[1])
    else:
        groups = q.shape[1] // k.shape[1]
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.device), dropout_p=dropout, scale=scaling)
    return out.transpose(1, 2).contiguous()


class UncachedStep:
    """A forward without a cache: each block attends over this forward's own keys (differentiable)."""

    def __init__(self, rope, tokens: int, attention_mask: torch.Tensor | None, device: torch.device):
        self.rope = rope
        self.tokens = tokens
        self.given = attention_mask if masks.is_prepared(attention_mask) else None
        self.padding = None if self.given is not None else padding_of(attention_mask)
        if self.padding is not None and self.padding.shape[1] != tokens:
            raise ValueError(f"attention_mask covers {self.padding.shape[1]} tokens; expected {tokens} (a forward "
                             "without a cache)")
        self.device = device
        self._plans: dict[tuple, masks.MaskPlan] = {}

    def positions(self) -> torch.Tensor:
        return torch.arange(self.tokens, device=self.device).unsqueeze(0)

    def _plan(self, layer, device: torch.device) -> masks.MaskPlan:
        key = (layer.attention_type, layer.sliding_window, device)
        if key not in self._plans:
            self._plans[key] = (masks.prepared(self.given, layer.attention_type, self.tokens, device)
                                if self.given is not None else
                                masks.plan(0, self.tokens, self.tokens, layer.sliding_window, self.padding, device))
        return self._plans[key]

    def attend(self, layer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        attn = layer.self_attn
        q, k = self.rope.rotate(q, k, q.device, layer.attention_type)
        return sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), self._plan(layer, q.device),
                    attn.scaling, attn.attention_dropout if layer.training else 0.0)

    def finish(self) -> None:
        pass
