"""hopscotch.from_pretrained: load a ``format="hopscotch"`` export as a patched model.

The skeleton is built with empty (meta) parameters, the written weights are assigned, and the skipped blocks --
whose weights were never written -- are freed, so nothing is allocated for them and the KV cache is compact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..patch import apply_plan
from ..plan import SkipPlan
from .formats import HOPSCOTCH_CONFIG_KEY, ExportError, skipped_weight

__all__ = ["from_pretrained"]


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise ExportError(f"{path} holds no model.safetensors or model.safetensors.index.json")
    sd = {}
    for f in files:
        sd.update(load_file(str(path / f)))
    return sd


def _set_norm_eps(model, entry: dict) -> None:
    """Format 2 holds the eps of every stream-reading norm (the fold is exact with them); format 1 has none."""
    fmt = entry.get("format", 1)
    if fmt not in (1, 2):
        raise ExportError(f"hopscotch export format {fmt!r}; this version reads formats 1 and 2 (upgrade hopscotch)")
    eps = entry.get("norm_eps")
    if eps is None:
        return
    from ..arch import base_model

    base = base_model(model)
    layers = list(base.layers)
    for name in ("input_layernorm", "post_attention_layernorm"):
        if len(eps[name]) != len(layers):
            raise ExportError(f"norm_eps[{name!r}] has {len(eps[name])} entries for {len(layers)} layers")
        for layer, e in zip(layers, eps[name]):
            getattr(layer, name).variance_epsilon = float(e)
    base.norm.variance_epsilon = float(eps["norm"])


def from_pretrained(path: str | os.PathLike, *, dtype: torch.dtype | str | None = None,
                    device: str | torch.device = "cpu"):
    """Load an export written with ``format="hopscotch"``; returns the patched model (eval mode)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..utils import parse_dtype

    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ExportError(f"{path} has no config.json; expected a directory written by export_model")
    entry = json.loads(cfg_path.read_text()).get(HOPSCOTCH_CONFIG_KEY)
    if not entry:
        raise ExportError(f"{cfg_path} has no {HOPSCOTCH_CONFIG_KEY!r} entry: not a format='hopscotch' export "
                          "(a 'vanilla' export loads with AutoModelForCausalLM.from_pretrained)")
    config = AutoConfig.from_pretrained(path)
    sd = _load_weights(path)
    torch_dtype = parse_dtype(dtype) if dtype is not None else next(iter(sd.values())).dtype
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    plan = SkipPlan.for_model(model, entry["skipped_attention"], entry["skipped_mlp"])
    expected = {k for k in model.state_dict() if not skipped_weight(k, plan)}
    if getattr(config, "tie_word_embeddings", False):
        expected.discard("lm_head.weight")
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise ExportError(f"{path}: weights do not match the config (missing {missing[:5]}, unexpected "
                          f"{unexpected[:5]})")
    model.load_state_dict({k: v.to(torch_dtype) for k, v in sd.items()}, strict=False, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    _set_norm_eps(model, entry)
    apply_plan(model, plan, free_skipped=True)
    return model.to(device).eval()
