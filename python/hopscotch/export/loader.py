"""hopscotch.from_pretrained: load a ``format="hopscotch"`` export as a patched model; ``load_decilm`` likewise
for a ``format="decilm"`` export (Llama layers with no-op blocks).

The skeleton is built with empty (meta) parameters, the written weights are assigned, and the skipped blocks --
whose weights were never written -- are freed, so nothing is allocated for them and the KV cache is compact. Every
other weight must be in the files with its shape: nothing is left missing or newly initialised.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import ArgumentError, as_path, check_arg
from ..paths import json_problem
from ..patch import apply_plan
from ..plan import PlanError, SkipPlan
from .fold import skipped_weight
from .formats import HOPSCOTCH_CONFIG_KEY, HOPSCOTCH_FORMAT, ExportError
from .info import mark_export

__all__ = ["from_pretrained", "load_decilm"]


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from safetensors import SafetensorError

    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            what = json_problem(exc) if isinstance(exc, ValueError) else "without a weight_map of file names"
            raise ExportError(f"{index} is {what}") from None
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise ExportError(f"{path} holds no model.safetensors or model.safetensors.index.json")
    sd = {}
    for f in files:
        try:
            sd.update(load_file(str(path / f)))
        except SafetensorError:
            raise ExportError(f"{path / f} is not a valid safetensors file (corrupt or truncated)") from None
    return sd


def _read_config(cfg_path: Path) -> dict:
    """config.json as a dict; ExportError when it is not a JSON object (an OSError reading it propagates)."""
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ExportError(f"{cfg_path} is {json_problem(exc)}") from None
    if not isinstance(cfg, dict):
        raise ExportError(f"{cfg_path} holds a JSON {type(cfg).__name__}; expected a config (a JSON object)")
    return cfg


def _check_entry(entry, cfg_path: Path) -> dict:
    """The config's ``hopscotch`` entry, refused unless it is this version's format."""
    if not entry:
        raise ExportError(f"{cfg_path} has no {HOPSCOTCH_CONFIG_KEY!r} entry: not a format='hopscotch' export "
                          "(a 'vanilla' or 'decilm' export loads with hopscotch.models.load_model)")
    fmt = entry.get("format") if isinstance(entry, dict) else None
    if fmt != HOPSCOTCH_FORMAT:
        raise ExportError(f"{cfg_path}: hopscotch export format {fmt!r}; this version reads format "
                          f"{HOPSCOTCH_FORMAT} (written by another hopscotch version: export the model again)")
    eps = entry.get("norm_eps")
    layer_norms = [k for k in eps if k != "norm"] if isinstance(eps, dict) else []
    if not layer_norms or "norm" not in eps or not all(isinstance(eps[k], list) for k in layer_norms):
        raise ExportError(f"{cfg_path}: its {HOPSCOTCH_CONFIG_KEY!r} entry lacks norm_eps (a list per stream-reading "
                          "norm of the layers, e.g. input_layernorm, and norm)")
    return entry


def _set_norm_eps(model, eps: dict, cfg_path: Path) -> None:
    """Put the eps of every stream-reading norm on the model's norms (the fold is exact with them)."""
    from ..arch import base_model

    base = base_model(model)
    layers = list(base.layers)
    for name in (n for n in eps if n != "norm"):  # the stream-reading norms (fold.norm_eps)
        if len(eps[name]) != len(layers):
            raise ExportError(f"{cfg_path}: norm_eps[{name!r}] has {len(eps[name])} entries for {len(layers)} layers")
        for layer, e in zip(layers, eps[name]):
            _set_eps(getattr(layer, name), e)
    _set_eps(base.norm, eps["norm"])


def _set_eps(norm, eps) -> None:
    """A Llama-style norm's ``variance_epsilon``, a Gemma norm's ``eps``."""
    setattr(norm, "variance_epsilon" if hasattr(norm, "variance_epsilon") else "eps", float(eps))


def _build_skipped(path: Path, config, skipped_attention, skipped_mlp, dtype):
    """(model, plan): the skeleton of ``config`` with the weights of ``path`` assigned, every weight the skip lists
    do not drop present with its shape (nothing left missing or newly initialised)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from ..utils import parse_dtype

    sd = _load_weights(path)
    torch_dtype = parse_dtype(dtype) if dtype is not None else next(iter(sd.values())).dtype
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    try:
        plan = SkipPlan.for_model(model, skipped_attention, skipped_mlp)
    except (PlanError, ArgumentError) as exc:
        raise ExportError(f"{path}: the skipped blocks it names are not a valid skip set ({exc})") from None
    skeleton = model.state_dict()
    expected = {k for k in skeleton if not skipped_weight(k, plan)}
    if getattr(config, "tie_word_embeddings", False):
        expected.discard("lm_head.weight")
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise ExportError(f"{path}: weights do not match the config (missing {missing[:5]}, unexpected "
                          f"{unexpected[:5]})")
    wrong = [f"{k} {tuple(v.shape)} (config: {tuple(skeleton[k].shape)})" for k, v in sd.items()
             if tuple(v.shape) != tuple(skeleton[k].shape)]
    if wrong:
        raise ExportError(f"{path}: weights of the wrong shape for its config: {', '.join(wrong[:3])}")
    model.load_state_dict({k: v.to(torch_dtype) for k, v in sd.items()}, strict=False, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model, plan


def _check_load_args(func: str, path, dtype, device) -> Path:
    path = as_path(path, func, "path")
    check_arg(dtype is None or isinstance(dtype, (str, torch.dtype)), func, "dtype", dtype,
              "None, a torch.dtype or a name such as 'bfloat16'")
    if isinstance(dtype, str):
        from ..utils import parse_dtype

        try:
            parse_dtype(dtype)
        except ValueError as exc:
            raise ArgumentError(f"{func}: dtype={dtype!r}: {exc}") from None
    check_arg(isinstance(device, (str, torch.device)), func, "device", device, "a device such as 'cpu' or 'cuda'")
    return path


def from_pretrained(path: str | os.PathLike, *, dtype: torch.dtype | str | None = None,
                    device: str | torch.device = "cpu"):
    """Load an export written with ``format="hopscotch"``; returns the patched model (eval mode). The model
    carries what it is (``export.info.export_info(model)``): applying another plan on top is refused."""
    from transformers import AutoConfig

    path = _check_load_args("from_pretrained", path, dtype, device)
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ExportError(f"{path} has no config.json; expected a directory written by export_model")
    entry = _check_entry(_read_config(cfg_path).get(HOPSCOTCH_CONFIG_KEY), cfg_path)
    config = AutoConfig.from_pretrained(path)
    model, plan = _build_skipped(path, config, entry.get("skipped_attention"), entry.get("skipped_mlp"), dtype)
    _set_norm_eps(model, entry["norm_eps"], cfg_path)
    apply_plan(model, plan, free_skipped=True)
    mark_export(model, path, "hopscotch", plan.skipped_attention, plan.skipped_mlp, entry.get("method"))
    return model.to(device).eval()


def _decilm_skips(cfg: dict, path: Path) -> tuple[list[int], list[int]]:
    """The skipped attention / MLP blocks of a DeciLM config, after checking every kept block is a plain Llama
    block of the model's own width (what this reader loads; vLLM reads more)."""
    blocks, n = cfg.get("block_configs"), cfg.get("num_hidden_layers")
    if not isinstance(blocks, list) or len(blocks) != n:
        raise ExportError(f"{path}: block_configs has {len(blocks) if isinstance(blocks, list) else blocks!r} entries "
                          f"for {n} layers")
    group = cfg["num_attention_heads"] // cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    ffn_mult = 1.5 * cfg["intermediate_size"] / cfg["hidden_size"]
    attn, mlp, odd = [], [], []
    for i, b in enumerate(blocks):
        a, f = b.get("attention", {}), b.get("ffn", {})
        if a.get("replace_with_linear") or f.get("replace_with_linear"):
            odd.append(f"layer {i} replaces a block with a linear layer")
        if a.get("no_op"):
            attn.append(i)
        elif a.get("n_heads_in_group", group) != group:
            odd.append(f"layer {i} has n_heads_in_group {a.get('n_heads_in_group')} (the config's is {group})")
        if f.get("no_op"):
            mlp.append(i)
        elif abs(float(f.get("ffn_mult", ffn_mult)) - ffn_mult) > 1e-6:
            odd.append(f"layer {i} has ffn_mult {f.get('ffn_mult')} (intermediate_size gives {ffn_mult:g})")
    if odd:
        raise ExportError(f"{path}: hopscotch reads DeciLM checkpoints whose kept blocks are the model's own Llama "
                          f"blocks, and {'; '.join(odd[:3])}: serve it with vLLM instead")
    return attn, mlp


def load_decilm(path: str | os.PathLike, *, dtype: torch.dtype | str | None = None,
                device: str | torch.device = "cpu"):
    """Load a ``format="decilm"`` export as what it is: Llama layers whose no-op blocks are skipped (a patched
    model, skipped weights never allocated, one RMSNorm eps as DeciLM has). Only config.json is read, never the
    Python file beside it, so no ``trust_remote_code`` is needed."""
    from transformers import LlamaConfig

    path = _check_load_args("load_decilm", path, dtype, device)
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ExportError(f"{path} has no config.json; expected a directory written by export_model")
    cfg = _read_config(cfg_path)
    if cfg.get("model_type") != "nemotron-nas" or "block_configs" not in cfg:
        raise ExportError(f"{cfg_path} is not a DeciLM (nemotron-nas) config with block_configs")
    attn, mlp = _decilm_skips(cfg, path)
    llama = {k: v for k, v in cfg.items() if k not in ("block_configs", "auto_map", "architectures", "model_type")}
    config = LlamaConfig(**llama)
    model, plan = _build_skipped(path, config, attn, mlp, dtype)
    apply_plan(model, plan, free_skipped=True)
    mark_export(model, path, "decilm", plan.skipped_attention, plan.skipped_mlp)
    return model.to(device).eval()
