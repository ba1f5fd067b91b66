"""Drop-in patching of a loaded HF causal LM: skip-aware decoder layers and a compact KV cache.

``__all__`` is the user API (docs/ARCHITECTURE.md, "Public API"). The scalar helpers below it are the search's
and the tests' (the learned scalars reach users through a plan: ``current_plan``, ``apply_plan``)."""

from .apply import apply_plan, current_plan
from .hopscotch_cache import CacheCapacityError, CacheMismatchError, HopscotchCache, kv_cache_bytes
from .layer import SCALAR_NAMES  # noqa: F401  (the search's, below the API)
from .patcher import (get_scalars, is_patched, patch_model, patched_layers, reset_scalars,  # noqa: F401
                      set_scalars, set_skips, unpatch_model)

__all__ = [
    "CacheCapacityError",
    "CacheMismatchError",
    "HopscotchCache",
    "apply_plan",
    "current_plan",
    "is_patched",
    "kv_cache_bytes",
    "patch_model",
    "set_skips",
    "unpatch_model",
]
