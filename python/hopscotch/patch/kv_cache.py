"""A transformers cache on a patched model: entries for kept attention blocks only (docs/ARCHITECTURE.md §2.2).

The patched model's own cache is ``hopscotch_cache.HopscotchCache`` (what ``generate()`` and ``use_cache=True`` get).
A transformers cache the caller brings (a ``DynamicCache`` or ``StaticCache`` built from the config with one layer
per decoder layer, e.g. by ``generate(cache_implementation="static")``, or one the user made) still works: kept
attention blocks get compact cache indices 0..K-1, and the cache is compacted before its first use: its layer list becomes the cache layers of the kept
blocks, in order, so per-layer cache types (sliding-window layers) stay with their blocks, skipped blocks own no
cache layer (and no memory), and ``get_seq_length()`` -- which reads cache layer 0 -- reads the first *kept*
block, so positions and masks are right whichever blocks are skipped, block 0 included.
"""

from __future__ import annotations

import torch

from ..errors import HopscotchError

__all__ = ["CacheMismatchError", "compact_cache", "kv_cache_bytes", "kv_layer_bytes"]


class CacheMismatchError(HopscotchError, ValueError):
    """A cache that was filled under another skip set (or by the unpatched model) cannot be reused."""


def _holds_tokens(layer) -> bool:
    if not getattr(layer, "is_initialized", False):
        return False
    keys = getattr(layer, "keys", None)
    if keys is None or keys.numel() == 0:
        return False
    n = layer.get_seq_length()
    return int(n) > 0


@torch.compiler.disable
def compact_cache(cache, kept: tuple[int, ...], num_layers: int):
    """Compact ``cache`` in place for the kept attention blocks ``kept`` (sorted original indices)."""
    tag = getattr(cache, "_hopscotch_kept", None)
    if tag == kept:
        return cache
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise CacheMismatchError(f"{type(cache).__name__} is not a transformers Cache with per-layer storage; "
                                 "pass a DynamicCache or StaticCache (or none)")
    if any(_holds_tokens(layer) for layer in layers):
        if tag is None and kept == tuple(range(num_layers)) and len(layers) == num_layers:
            cache._hopscotch_kept = kept  # nothing skipped: the full layout is the compact layout
            return cache
        raise CacheMismatchError(
            f"the cache already holds tokens written under another skip set ({_describe(tag, num_layers)}); the "
            f"current plan keeps attention blocks {list(kept)}. Start a new cache after changing the plan.")
    if tag is not None:  # an empty cache compacted for another plan: start from its full layout again
        layers = getattr(cache, "_hopscotch_full_layers", [])
    if len(layers) == num_layers:
        cache._hopscotch_full_layers = list(layers)
        cache.layers = [layers[i] for i in kept]
    elif len(layers) != 0:
        raise CacheMismatchError(f"the cache has {len(layers)} layers; expected {num_layers} (one per decoder layer, "
                                 f"as DynamicCache(config=...) makes) or none (a lazily grown DynamicCache())")
    cache._hopscotch_kept = kept
    return cache


def _describe(tag, num_layers: int) -> str:
    if tag is None:
        return f"a cache laid out for all {num_layers} layers, e.g. filled by the unpatched model"
    return f"kept attention blocks {list(tag)}"


def kv_layer_bytes(layer) -> int:
    """Bytes held by the keys and values of one cache layer."""
    return sum(t.numel() * t.element_size() for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
               if isinstance(t, torch.Tensor))


def kv_cache_bytes(cache) -> int:
    """Bytes the keys and values of a cache hold: a HopscotchCache's allocation (capacity included), or what every
    layer of a transformers cache holds."""
    if hasattr(cache, "allocated_bytes"):
        return cache.allocated_bytes()
    return sum(kv_layer_bytes(layer) for layer in getattr(cache, "layers", []))
