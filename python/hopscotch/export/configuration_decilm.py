"""The DeciLM ("nemotron-nas") config class, shipped inside every ``format="decilm"`` export.

transformers has no built-in "nemotron-nas" model type, so engines that read the config through transformers
(vLLM among them) load it with ``trust_remote_code=True`` from the ``auto_map`` entry in config.json, which
names this file. It is Llama's config plus ``block_configs``: one entry per layer, ``attention`` (``no_op``,
``replace_with_linear``, ``n_heads_in_group``) and ``ffn`` (``no_op``, ``replace_with_linear``, ``ffn_mult``),
readable as attributes (``config.block_configs[3].attention.no_op``) and saved back as plain JSON.
This file imports nothing but transformers: it is copied as is next to the weights.
"""

from transformers import LlamaConfig

__all__ = ["BlockConfig", "DeciLMConfig"]


class _Section(dict):
    """A dict whose keys read as attributes; a missing key is an AttributeError (so ``hasattr`` works)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"block config has no {name!r}") from None


class BlockConfig(_Section):
    """One layer: ``attention`` and ``ffn`` sections."""

    def __init__(self, attention=None, ffn=None, **extra):
        super().__init__(attention=_Section(attention or {}), ffn=_Section(ffn or {}), **extra)


class DeciLMConfig(LlamaConfig):
    model_type = "nemotron-nas"

    def __init__(self, block_configs=None, **kwargs):
        self.block_configs = [b if isinstance(b, BlockConfig) else BlockConfig(**b) for b in block_configs or []]
        super().__init__(**kwargs)
