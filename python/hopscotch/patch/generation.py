"""generate() on a patched model uses the model's own HopscotchCache.

transformers' ``generate`` makes its cache itself (a ``DynamicCache`` unless the user passed one or asked for
another implementation). ``patch_model`` has it make a ``HopscotchCache`` sized for its ``max_length`` instead (so
a generation never grows it), through ``hf_compat.install_cache_factory``, which holds the version-dependent part.
A cache the user passes in, and any ``cache_implementation`` asked for ("dynamic", "static" ...), are left as they
are: the patched forward adapts a transformers cache at the edge (``hf_cache.py``). ``unpatch_model`` removes it.
"""

from __future__ import annotations

from torch import nn

from ..hf_compat import install_cache_factory, remove_cache_factory
from .hopscotch_cache import HopscotchCache

__all__ = ["install_generate_hook", "remove_generate_hook"]


def install_generate_hook(lm: nn.Module) -> None:
    """generate() on ``lm`` (the causal-LM instance generate is called on) makes a HopscotchCache."""
    install_cache_factory(lm, lambda max_length: HopscotchCache(capacity=max_length))


def remove_generate_hook(lm: nn.Module) -> None:
    remove_cache_factory(lm)
