"""generate() on a patched model uses the model's own HopscotchCache.

transformers' ``generate`` makes its cache in ``_prepare_cache_for_generation`` (a ``DynamicCache`` unless the user
passed one or asked for another implementation). ``patch_model`` wraps that method on the model instance: where
generate would make a plain ``DynamicCache`` for itself, it gets a ``HopscotchCache`` sized for its ``max_length``
instead (so a generation never grows it). A cache the user passes in, and any ``cache_implementation`` asked for
("dynamic", "static", "offloaded", "quantized" ...), are left as they are: the patched forward fills a transformers
cache too (compacted to the kept blocks). ``unpatch_model`` removes the wrapper.
"""

from __future__ import annotations

import functools
import inspect

from torch import nn

from ..hf_compat import cache_kwarg_name
from .hopscotch_cache import HopscotchCache

__all__ = ["install_generate_hook", "remove_generate_hook"]

_ATTR = "_prepare_cache_for_generation"
_MARK = "_hopscotch_generate_hook"


def install_generate_hook(lm: nn.Module) -> None:
    """Wrap ``lm._prepare_cache_for_generation`` (``lm``: the causal-LM instance generate is called on)."""
    original = getattr(lm, _ATTR, None)
    if original is None or getattr(original, _MARK, False):
        return
    params = inspect.signature(original).parameters

    @functools.wraps(original)
    def prepare(generation_config, model_kwargs, *args, **kwargs):
        name = cache_kwarg_name()
        given = model_kwargs.get(name) is not None
        result = original(generation_config, model_kwargs, *args, **kwargs)
        made = model_kwargs.get(name)
        default = getattr(generation_config, "cache_implementation", None) is None
        if not given and default and type(made).__name__ == "DynamicCache":
            bound = dict(zip(list(params)[2:], args), **kwargs)
            max_length = bound.get("max_cache_length") or getattr(generation_config, "max_length", None)
            model_kwargs[name] = HopscotchCache(capacity=max_length if isinstance(max_length, int) and max_length > 0
                                                else None)
        return result

    setattr(prepare, _MARK, True)
    lm.__dict__[_ATTR] = prepare


def remove_generate_hook(lm: nn.Module) -> None:
    hook = lm.__dict__.get(_ATTR)
    if hook is not None and getattr(hook, _MARK, False):
        del lm.__dict__[_ATTR]
