"""Where the parts of a supported HF causal LM live (decoder layers, final norm, rotary), found by structure.

Routing is by ``config.model_type``: Llama, Qwen2, Mistral and Qwen3 share one decoder-layer layout
(``self_attn`` with q/k/v/o projections, ``mlp`` with gate/up/down, two RMSNorms; Qwen3 adds per-head q/k norms).
Anything else is refused with an error naming the supported types.
"""

from __future__ import annotations

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
    "num_layers",
]

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral", "qwen3")
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
    for i, layer in enumerate(decoder_layers(lm)):
        children = set(layer._modules)
        if getattr(layer, "_hopscotch_layer", False):
            continue
        if not _LAYER_CHILDREN <= children or list(layer._parameters):
            raise UnsupportedModelError(
                f"decoder layer {i} of this {model_type} model has children {sorted(children)}; expected "
                f"{sorted(_LAYER_CHILDREN)} (an unusual variant of the architecture)")
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
