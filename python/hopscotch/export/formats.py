"""What each export format writes: which weights, and which config."""

from __future__ import annotations

import re

from ..plan import SkipPlan

__all__ = ["FORMATS", "ExportError", "HOPSCOTCH_CONFIG_KEY", "decilm_config", "hopscotch_config", "skipped_weight",
           "weight_scale_key"]

FORMATS = ("hopscotch", "decilm", "vanilla")
HOPSCOTCH_CONFIG_KEY = "hopscotch"
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")
# Weights that belong to an attention block / an MLP block (the norm in front of each block included).
_ATTN_PARTS = ("self_attn.", "input_layernorm.")
_MLP_PARTS = ("mlp.", "post_attention_layernorm.")


class ExportError(ValueError):
    """The model, plan or destination cannot be exported as asked."""


def _layer_part(name: str) -> tuple[int | None, str]:
    m = _LAYER.search(name)
    return (int(m.group(1)), m.group(2)) if m else (None, name)


def skipped_weight(name: str, plan: SkipPlan) -> bool:
    """True for the weights of a skipped block (not written by the hopscotch and decilm formats)."""
    layer, part = _layer_part(name)
    if layer is None:
        return False
    return (layer in plan.skipped_attention and part.startswith(_ATTN_PARTS)) or \
        (layer in plan.skipped_mlp and part.startswith(_MLP_PARTS))


def weight_scale_key(name: str) -> tuple[int | None, str | None]:
    """(layer, "attn") for o_proj, (layer, "mlp") for down_proj (weight and bias): the tensors scalars fold into."""
    layer, part = _layer_part(name)
    if layer is not None and part.startswith("self_attn.o_proj."):
        return layer, "attn"
    if layer is not None and part.startswith("mlp.down_proj."):
        return layer, "mlp"
    return None, None


def hopscotch_config(cfg: dict, plan: SkipPlan) -> dict:
    return {**cfg, HOPSCOTCH_CONFIG_KEY: {"format": 1, "skipped_attention": plan.skipped_attention,
                                          "skipped_mlp": plan.skipped_mlp,
                                          "method": plan.provenance.get("method"),
                                          "fingerprint": plan.fingerprint["config_hash"]}}


def _find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


def decilm_config(config, plan: SkipPlan) -> dict:
    """The DeciLM (``nemotron-nas``) config entries for this model and plan; refuses what the format cannot hold.

    DeciLM layers are Llama layers whose attention or FFN may be a no-op; an FFN's width is ``ffn_mult``
    (intermediate = multiple of 256 at or above int(2 * ffn_mult * hidden / 3)), KV heads per layer
    ``num_attention_heads / n_heads_in_group``.
    """
    problems = []
    if config.model_type not in ("llama", "mistral"):
        problems.append(f"model_type {config.model_type!r} (its layers are not Llama layers"
                        f"{': per-head q/k norms' if config.model_type == 'qwen3' else ''})")
    if getattr(config, "attention_bias", False) or config.model_type == "qwen2":
        problems.append("attention biases")
    if getattr(config, "mlp_bias", False):
        problems.append("MLP biases")
    if getattr(config, "sliding_window", None) is not None:
        problems.append(f"sliding-window attention (window {config.sliding_window})")
    hidden, inter = config.hidden_size, config.intermediate_size
    ffn_mult = 1.5 * inter / hidden
    if _find_multiple(int(2 * ffn_mult * hidden / 3), 256) != inter:
        problems.append(f"intermediate_size {inter} (not a multiple of 256, which ffn_mult cannot express)")
    if problems:
        raise ExportError("the decilm format cannot represent this model exactly: " + "; ".join(problems)
                          + ". Use format='hopscotch' or 'vanilla'.")
    group = config.num_attention_heads // config.num_key_value_heads
    blocks = [{"attention": {"no_op": i in plan.skipped_attention, "replace_with_linear": False,
                             "n_heads_in_group": group},
               "ffn": {"no_op": i in plan.skipped_mlp, "replace_with_linear": False, "ffn_mult": ffn_mult}}
              for i in range(config.num_hidden_layers)]
    return {"model_type": "nemotron-nas", "architectures": ["DeciLMForCausalLM"], "block_configs": blocks}
