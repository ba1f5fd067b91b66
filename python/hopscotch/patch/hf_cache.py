"""A transformers cache on a patched model, adapted at the edge (docs/ARCHITECTURE.md §2.2).

The patched model's own cache is ``hopscotch_cache.HopscotchCache`` (what ``generate()`` and ``use_cache=True``
get). A transformers cache the caller brings still works -- a ``DynamicCache`` or ``StaticCache`` with one layer
per decoder layer (``generate(cache_implementation="static")``, ``DynamicCache(config=...)``), or a lazily grown
``DynamicCache()`` -- through this module alone:

* ``compact_cache`` lays it out for the kept attention blocks before its first use: its layer list becomes the
  cache layers of the kept blocks, in order (compact indices 0..K-1), so per-layer cache types (sliding-window
  layers) stay with their blocks, skipped blocks own no cache layer and no memory, and ``get_seq_length()`` --
  which reads cache layer 0 -- reads the first *kept* block: positions are right whichever blocks are skipped;
* ``TransformersCacheStep`` is the forward's step (``steps.py``): each kept block rotates its k and q, hands k and v
  to the cache's public ``update`` and attends over what it returns, under a mask from ``masks.py``.
"""

from __future__ import annotations

import torch

from . import masks
from .hopscotch_cache import CacheMismatchError
from .steps import padding_of, sdpa

__all__ = ["TransformersCacheStep", "compact_cache"]

_KEPT = "_hopscotch_kept"  # set on the caller's cache object: the kept blocks it is laid out for
_FULL = "_hopscotch_full_layers"  # its layer list before compaction


def _holds_tokens(layer) -> bool:
    if not getattr(layer, "is_initialized", False):
        return False
    keys = getattr(layer, "keys", None)
    if keys is None or keys.numel() == 0:
        return False
    return int(layer.get_seq_length()) > 0


@torch.compiler.disable
def compact_cache(cache, kept: tuple[int, ...], num_layers: int):
    """Compact ``cache`` in place for the kept attention blocks ``kept`` (sorted original indices)."""
    tag = getattr(cache, _KEPT, None)
    if tag == kept:
        return cache
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise CacheMismatchError(f"{type(cache).__name__} is not a transformers Cache with per-layer storage; "
                                 "pass a DynamicCache or StaticCache (or none)")
    if any(_holds_tokens(layer) for layer in layers):
        if tag is None and kept == tuple(range(num_layers)) and len(layers) == num_layers:
            setattr(cache, _KEPT, kept)  # nothing skipped: the full layout is the compact layout
            return cache
        raise CacheMismatchError(
            f"the cache already holds tokens written under another skip set ({_describe(tag, num_layers)}); the "
            f"current plan keeps attention blocks {list(kept)}. Start a new cache after changing the plan.")
    if tag is not None:  # an empty cache compacted for another plan: start from its full layout again
        layers = getattr(cache, _FULL, [])
    if len(layers) == num_layers:
        setattr(cache, _FULL, list(layers))
        cache.layers = [layers[i] for i in kept]
    elif len(layers) != 0:
        raise CacheMismatchError(f"the cache has {len(layers)} layers; expected {num_layers} (one per decoder layer, "
                                 f"as DynamicCache(config=...) makes) or none (a lazily grown DynamicCache())")
    setattr(cache, _KEPT, kept)
    return cache


def _describe(tag, num_layers: int) -> str:
    if tag is None:
        return f"a cache laid out for all {num_layers} layers, e.g. filled by the unpatched model"
    return f"kept attention blocks {list(tag)}"


class TransformersCacheStep:
    """One forward's use of a (compacted) transformers cache."""

    def __init__(self, cache, rope, tokens: int, attention_mask: torch.Tensor | None, device: torch.device):
        self.cache = cache
        self.rope = rope
        self.start = int(cache.get_seq_length())
        self.end = self.start + tokens
        # generate() hands a static cache's model a mask it prepared (4-D, or one per attention type): taken as is
        self.given = attention_mask if masks.is_prepared(attention_mask) else None
        self.padding = None if self.given is not None else padding_of(attention_mask)
        if self.padding is not None and self.padding.shape[1] < self.end:
            raise ValueError(f"attention_mask covers {self.padding.shape[1]} tokens; expected {self.end} (the "
                             f"{self.start} cached and the {tokens} of this forward)")
        self.device = device

    def positions(self) -> torch.Tensor:
        return torch.arange(self.start, self.end, device=self.device).unsqueeze(0)

    def attend(self, layer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        attn = layer.self_attn
        q, k = self.rope.rotate(q, k, q.device, layer.attention_type)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        # The cache appends (torch.cat) or copies what it is given: contiguous, or CUDA's cat takes its slow path.
        k, v = self.cache.update(k.contiguous(), v.contiguous(), layer.cache_index)
        plan = (masks.prepared(self.given, layer.attention_type, k.shape[2], q.device) if self.given is not None
                else masks.plan(self.start, self.end, k.shape[2], layer.sliding_window, self.padding, q.device))
        return sdpa(q, k, v, plan, attn.scaling, attn.attention_dropout if layer.training else 0.0)

    def finish(self) -> None:
        pass
