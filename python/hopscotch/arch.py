"""Where the parts of a supported HF causal LM live (decoder layers, final norm, rotary), found by structure.

Routing is by ``config.model_type``: Llama, Qwen2, Mistral and Qwen3 share one decoder-layer layout
(``self_attn`` with q/k/v/o projections, ``mlp`` with gate/up/down, two RMSNorms; Qwen3 adds per-head q/k norms).
Gemma 3 (``gemma3_text``) has the same blocks with "sandwich" norms -- one before and one after each block -- and
norms that scale by ``1 + weight``: ``NormLayout`` says where a family's norms are, ``norm_params`` how one is read.
Anything else is refused with an error naming the supported types.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "UnsupportedModelError",
    "base_model",
    "causal_lm",
    "check_supported",
    "decoder_layers",
    "layer_attention_type",
    "layer_sliding_window",
    "NormLayout",
    "norm_layout",
    "norm_params",
    "num_layers",
]

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral", "qwen3", "gemma3_text")


@dataclass(frozen=True)
class NormLayout:
    """A decoder layer's norms, by child name: before each block (``*_pre``) and, for sandwich-norm families, after
    it (``*_post``: applied to the block's output before it joins the residual stream; None: no such norm)."""

    attn_pre: str = "input_layernorm"
    mlp_pre: str = "post_attention_layernorm"
    attn_post: str | None = None
    mlp_post: str | None = None

    def attention_norms(self) -> tuple[str, ...]:
        return tuple(n for n in (self.attn_pre, self.attn_post) if n is not None)

    def mlp_norms(self) -> tuple[str, ...]:
        return tuple(n for n in (self.mlp_pre, self.mlp_post) if n is not None)


_NORM_LAYOUTS = {"gemma3_text": NormLayout("input_layernorm", "pre_feedforward_layernorm", "post_attention_layernorm",
                                           "post_feedforward_layernorm")}
# Norms computing x * rsqrt(mean(x^2) + eps) * (1 + weight) in float32, eps in ``.eps``
_UNIT_OFFSET_NORMS = ("Gemma3RMSNorm",)
# Config values of a family that the patched forward does not implement: refused when not these defaults
_REFUSED_CONFIG = {"gemma3_text": {"attn_logit_softcapping": None, "final_logit_softcapping": None,
                                   "use_bidirectional_attention": (None, False)}}


def norm_layout(model_type: str) -> NormLayout:
    """Where the norms of a ``model_type`` decoder layer are."""
    return _NORM_LAYOUTS.get(model_type, NormLayout())


def norm_params(module: nn.Module) -> tuple[torch.Tensor, float]:
    """``(weight, eps)`` of an RMSNorm written as ``x * rsqrt(mean(x^2) + eps) * weight``: a Llama-style norm's own
    weight and ``variance_epsilon``; a Gemma norm's ``1 + weight`` (formed in float32, as Gemma does) and ``eps``."""
    eps = getattr(module, "variance_epsilon", None)
    if eps is not None:
        return module.weight, eps
    if type(module).__name__ not in _UNIT_OFFSET_NORMS:
        raise UnsupportedModelError(f"norm {type(module).__name__} has no variance_epsilon; expected a Llama-style "
                                    f"RMSNorm or one of {', '.join(_UNIT_OFFSET_NORMS)}")
    w = module.weight
    return (1.0 + w.float()).to(w.dtype), module.eps
_LAYER_CHILDREN = {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}


class UnsupportedModelError(TypeError):
    """The model is not a decoder-only architecture hopscotch knows how to patch."""


def causal_lm(model: nn.Module) -> nn.Module:
    """The HF causal LM inside ``model``: itself, or the transformers model a PEFT wrapper holds."""
    from transformers import PreTrainedModel

    current = model
    for _ in range(4):
        if isinstance(current, PreTrainedModel) and current.get_output_embeddings() is not None:
            return current
        if hasattr(current, "get_base_model"):  # peft.PeftModel
            inner = current.get_base_model()
            if inner is not current:
                current = inner
                continue
        break
    raise UnsupportedModelError(f"{type(model).__name__} is not an HF causal LM (a transformers model with an LM "
                                f"head); expected one of {', '.join(SUPPORTED_MODEL_TYPES)}")


def base_model(model: nn.Module) -> nn.Module:
    """The decoder stack (e.g. ``LlamaModel``) of a causal LM, through ``base_model_prefix``."""
    if hasattr(model, "layers") and hasattr(model, "embed_tokens"):
        return model
    lm = causal_lm(model)
    prefix = getattr(lm, "base_model_prefix", "model")
    inner = getattr(lm, prefix, None)
    if inner is not None and hasattr(inner, "layers"):
        return inner
    raise UnsupportedModelError(f"{type(lm).__name__} has no decoder layers at .{prefix}.layers; expected an HF causal "
                                f"LM of type {', '.join(SUPPORTED_MODEL_TYPES)}")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's decoder layers, in order."""
    return base_model(model).layers


def num_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def check_supported(model: nn.Module) -> str:
    """The model type, after checking that hopscotch can patch this model; raises UnsupportedModelError."""
    lm = causal_lm(model)
    model_type = getattr(lm.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(f"model_type {model_type!r} ({type(lm).__name__}) is not supported; hopscotch "
                                    f"patches {', '.join(SUPPORTED_MODEL_TYPES)}")
    for name, allowed in _REFUSED_CONFIG.get(model_type, {}).items():
        value = getattr(lm.config, name, None)
        if value not in (allowed if isinstance(allowed, tuple) else (allowed,)):
            raise UnsupportedModelError(f"{model_type} with {name}={value!r} is not supported: the patched forward "
                                        f"does not implement it (expected {name}={allowed!r})")
    needed = _LAYER_CHILDREN | set(norm_layout(model_type).attention_norms() + norm_layout(model_type).mlp_norms())
    for i, layer in enumerate(decoder_layers(lm)):
        children = set(layer._modules)
        if getattr(layer, "_hopscotch_layer", False):
            continue
        if not needed <= children or list(layer._parameters):
            raise UnsupportedModelError(
                f"decoder layer {i} of this {model_type} model has children {sorted(children)}; expected "
                f"{sorted(needed)} (an unusual variant of the architecture)")
        attn = layer.self_attn
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            if not hasattr(attn, name):
                raise UnsupportedModelError(f"attention block {i} has no {name}; expected q/k/v/o projections")
    return model_type


def layer_attention_type(config, layer_idx: int) -> str:
    """``"full_attention"`` or ``"sliding_attention"``, as the model's own mask and cache code decide it."""
    types = getattr(config, "layer_types", None)
    if types is not None:
        return types[layer_idx]
    return "sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"


def layer_sliding_window(config, layer_idx: int) -> int | None:
    """How many keys (the query's own included) a query of layer ``layer_idx`` attends to: the config's
    ``sliding_window`` for a sliding-window layer, None (all) for a full-attention one."""
    if layer_attention_type(config, layer_idx) != "sliding_attention":
        return None
    return getattr(config, "sliding_window", None)
