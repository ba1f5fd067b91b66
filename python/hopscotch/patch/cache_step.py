"""One forward's use of a HopscotchCache: which slots it writes, which keys each attention block reads, which mask.

Built once per forward (``StackRun``), shared by every kept attention block. Two modes:

* **eager**: the cache's Python length says where to write (``reserve`` grows the buffers first if needed) and
  attention reads a view of the filled part. No mask for an unpadded batch: a decode step attends to every
  cached token (a sliding-window block to a view of the last ``window`` ones), a first forward is plain causal
  (``is_causal``). A left-padded batch, or a forward that continues a sequence with several tokens, gets one
  boolean mask per attention type, built here once.
* **traced** (under ``torch.compile``): lengths and slots are device tensors only (no Python int that changes from
  step to step, so no recompilation and no host sync), and attention reads the whole capacity under a mask built
  in the graph from the slots. The cache must already hold the capacity the step needs (an eager prefill, or
  ``HopscotchCache(capacity=...)`` / ``generate``'s ``max_length``); a slot past it is refused by the kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import masks
from .hopscotch_cache import HopscotchCache

__all__ = ["CacheStep"]


class CacheStep:
    def __init__(self, cache: HopscotchCache, rope, batch: int, tokens: int, attention_mask: torch.Tensor | None,
                 traced: bool):
        self.cache = cache
        self.rope = rope
        self.tokens = tokens
        self.traced = traced
        device = cache.layers[0].device
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; the patched model with its "
                             "own KV cache takes a 2-D [batch, length] padding mask (1 = token, 0 = padding)")
        if traced:
            self.start = None
            self.end = None
            self.slots = cache.length_tensor() + torch.arange(tokens, device=device)
        else:
            self.start = cache.reserve(batch, tokens, attention_mask)
            self.end = self.start + tokens
            self.slots = torch.arange(self.start, self.end, device=device)
            if attention_mask is not None and attention_mask.shape[1] != self.end:
                raise ValueError(f"attention_mask covers {attention_mask.shape[1]} tokens; expected {self.end} (the "
                                 f"{self.start} cached and the {tokens} of this forward)")
        if attention_mask is not None:
            new = attention_mask[:, -tokens:].to(device=device, dtype=torch.bool)
            if cache.padded:
                cache.pad_mask.index_copy_(1, self.slots, new)
            elif self.traced or self.start > 0:
                # Unpadded so far: a new token marked as padding cannot be honoured without rebuilding the
                # sequence's masks. Refuse it, on the device (no host sync).
                torch._assert_async(new.all(), "attention_mask marks a new token of an unpadded batch as padding; "
                                                "a HopscotchCache records padding at a sequence's first forward")
        self._masks: dict[tuple, tuple] = {}
        self._slots_on: dict[tuple, torch.Tensor] = {(device, 0): self.slots}

    def slots_on(self, device: torch.device, offset: int = 0) -> torch.Tensor:
        """The slots on ``device`` (a model dispatched across devices: one copy per device) in a buffer that
        starts at position ``offset`` (a window-sized block's: ``sliding.py``)."""
        if (device, offset) not in self._slots_on:
            self._slots_on[(device, offset)] = self.slots.to(device) - offset if offset else self.slots.to(device)
        return self._slots_on[(device, offset)]

    def positions(self) -> torch.Tensor:
        """Position ids when the caller gives none: the slot of each token, [1, tokens]."""
        return self.slots.unsqueeze(0)

    def _plan(self, window: int | None, device: torch.device) -> tuple[torch.Tensor | None, bool, int, int | None]:
        """(mask, is_causal, first key, end key) for blocks with sliding ``window`` (None: full attention)."""
        cache, T = self.cache, self.tokens
        if self.traced:  # over the whole capacity; the slots are device tensors
            mask = masks.allowed(self.slots, torch.arange(cache.capacity, device=self.slots.device), window,
                                 cache.pad_mask if cache.padded else None)
            return mask.to(device), False, 0, None
        start, end = self.start, self.end
        lo = 0 if window is None else max(0, start - window + 1)  # the first key a query of this forward reads
        if not cache.padded and T == 1:  # a decode step: a view of the keys it may read, no mask
            return None, False, lo, end
        mask, causal = masks.plan(start, end, end - lo, window, cache.pad_mask[:, :end] if cache.padded else None,
                                  device)
        return mask, causal, lo, end

    def attend(self, layer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Rotate q in place and write the rotated k and v into their slots of ``layer``'s cache block (one
        kernel), then SDPA of q over the block's cached keys and values; returns [B, T, Hq, D]."""
        block = self.cache.layers[layer.cache_index]
        self.rope.rotate_into_cache(q, k, v, block.key_buffer, block.value_buffer,
                                    self.slots_on(q.device, block.offset), layer.attention_type)
        window = block.sliding_window
        key = (window, block.device)
        if key not in self._masks:
            self._masks[key] = self._plan(window, block.device)
        mask, causal, lo, hi = self._masks[key]
        keys, values = block.key_buffer, block.value_buffer
        if hi is not None:  # slots of positions lo..hi-1 (a window-sized block's buffer starts at its offset)
            lo, hi = lo - block.offset, hi - block.offset
            keys, values = keys[:, :, lo:hi], values[:, :, lo:hi]
        scaling = layer.self_attn.scaling
        if mask is None:  # flash attention, GQA native
            out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, is_causal=causal, scale=scaling,
                                                 enable_gqa=True)
            return out.transpose(1, 2)
        # With a mask, SDPA's kernels that take one do not take enable_gqa (it would fall back to repeating K and V
        # per query head). Fold each KV head's query heads into its query rows instead: q [B, T, Hkv * G, D] ->
        # [B, Hkv, G * T, D] (a view at a decode step), the mask repeated per group.
        bsz, T, hq, d = q.shape
        hkv = keys.shape[1]
        g = hq // hkv
        qf = q.view(bsz, T, hkv, g, d).permute(0, 2, 3, 1, 4).reshape(bsz, hkv, g * T, d)
        mf = mask if T == 1 else mask.unsqueeze(2).expand(-1, -1, g, -1, -1).reshape(mask.shape[0], 1, g * T, -1)
        out = F.scaled_dot_product_attention(qf, keys, values, attn_mask=mf, scale=scaling)
        return out.view(bsz, hkv, g, T, d).reshape(bsz, hq, T, d).transpose(1, 2)

    def finish(self) -> None:
        """After every kept block has written its tokens."""
        if self.traced:
            self.cache.advance_traced(self.tokens)
        else:
            self.cache.advance(self.tokens)
