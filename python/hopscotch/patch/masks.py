"""Attention masks of a patched forward: the one place they are built (docs/ARCHITECTURE.md §2.9).

Every kind of forward -- with the model's own cache (``cache_step.CacheStep``, eager or traced), without a cache
(``steps.UncachedStep``) or with a transformers cache the caller brought (``hf_cache.TransformersCacheStep``) --
asks this module which keys each query may attend to. A mask is a boolean ``[batch or 1, 1, queries, keys]``
tensor, True where attention is allowed (SDPA's convention):

    allowed(q, kv) = kv <= q  and  q - kv < window (a sliding-window block)  and  key kv is not padding

``plan`` returns no mask where SDPA can do without one: an unpadded decode step over exactly the held keys, or an
unpadded first forward (plain causal, ``is_causal``). A mask the caller prepared -- 4-D, or one per attention type
(what ``generate()`` hands a static cache's model) -- is taken as given (``prepared``).
"""

from __future__ import annotations

import torch

__all__ = ["MaskPlan", "allowed", "is_prepared", "plan", "prepared"]

# (mask or None, is_causal): what SDPA is called with
MaskPlan = tuple[torch.Tensor | None, bool]


def allowed(query_pos: torch.Tensor, key_pos: torch.Tensor, window: int | None,
            key_padding: torch.Tensor | None) -> torch.Tensor:
    """The boolean mask ``[B or 1, 1, T, S]`` for queries at ``query_pos`` [T] and keys at ``key_pos`` [S];
    ``key_padding`` [B, S] is True for real tokens (None: no padding)."""
    q = query_pos.unsqueeze(1)
    kv = key_pos.unsqueeze(0)
    ok = kv <= q
    if window is not None:
        ok = ok & (q - kv < window)
    if key_padding is not None:
        ok = ok.unsqueeze(0) & key_padding.unsqueeze(1)
    return ok.view(-1, 1, query_pos.shape[0], key_pos.shape[0])


def plan(start: int, end: int, num_keys: int, window: int | None, padding: torch.Tensor | None,
         device: torch.device) -> MaskPlan:
    """The mask for queries at positions ``start .. end-1`` over ``num_keys`` keys, the last of which holds the
    position ``end - 1`` (a full cache holds positions 0..end-1; a sliding-window layer of a transformers cache keeps
    only the last ones; a static cache holds ``num_keys >= end`` slots, those past ``end`` unwritten).

    ``padding``: the 2-D attention mask [B, >= end] (1 = token), or None when nothing is padded."""
    tokens = end - start
    offset = max(0, end - num_keys)  # position of the first key
    if padding is None and offset == 0 and num_keys == end and (window is None or end <= window):
        if tokens == 1:
            return None, False
        if start == 0:
            return None, True
    key_pos = torch.arange(offset, offset + num_keys, device=device)
    pad = None
    if padding is not None:
        pad = padding.to(device=device, dtype=torch.bool)[:, key_pos.clamp(max=end - 1)]
    return allowed(torch.arange(start, end, device=device), key_pos, window, pad), False


def is_prepared(attention_mask) -> bool:
    """A mask already laid out per query and key (4-D, or a dict of them per attention type), not a padding mask."""
    return isinstance(attention_mask, dict) or (isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4)


def prepared(attention_mask, attention_type: str, num_keys: int, device: torch.device) -> MaskPlan:
    """The plan for a prepared mask: its entry for ``attention_type`` (a dict), its first ``num_keys`` keys, as
    booleans (an additive float mask allows where it is 0)."""
    mask = attention_mask[attention_type] if isinstance(attention_mask, dict) else attention_mask
    if mask is None:
        return None, True
    mask = mask[..., :num_keys].to(device)
    return (mask if mask.dtype == torch.bool else mask == 0), False
