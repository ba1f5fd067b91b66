"""Drop-in patching of a loaded HF causal LM: skip-aware decoder layers and a compact KV cache."""

from .apply import apply_plan, current_plan
from .hf_cache import compact_cache
from .hopscotch_cache import CacheCapacityError, CacheMismatchError, HopscotchCache, kv_cache_bytes
from .layer import SCALAR_NAMES, HopscotchDecoderLayer
from .patcher import (get_scalars, is_patched, patch_model, patched_layers, reset_scalars, set_scalars, set_skips,
                      unpatch_model)

__all__ = [
    "CacheCapacityError",
    "CacheMismatchError",
    "HopscotchCache",
    "apply_plan",
    "current_plan",
    "HopscotchDecoderLayer",
    "SCALAR_NAMES",
    "compact_cache",
    "get_scalars",
    "is_patched",
    "kv_cache_bytes",
    "patch_model",
    "patched_layers",
    "reset_scalars",
    "set_scalars",
    "set_skips",
    "unpatch_model",
]
