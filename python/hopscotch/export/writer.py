"""export_model: write a skipped model as a checkpoint other code can load.

Formats:
  ``hopscotch``  safetensors without the skipped blocks' weights + a config.json with a ``hopscotch`` entry naming
                 them; ``hopscotch.from_pretrained(dir)`` loads it as a patched model with the compact KV cache.
  ``decilm``     ``DeciLMForCausalLM`` with per-layer ``block_configs`` (``attention.no_op`` for skipped blocks):
                 the heterogeneous-layer format vLLM, llama.cpp, MLX and TensorRT-LLM serve.
  ``vanilla``    the original architecture with skipped blocks kept and their output projection zeroed: stock
                 ``AutoModelForCausalLM.from_pretrained`` loads it, same outputs, no speed gain.
  ``gguf``       one llama.cpp file, its DeciLM ("deci") architecture (``gguf_export.py``).
  ``executorch`` ExecuTorch's Llama checkpoint and params (``layer_types``: ``skip_attention``), and with an
                 ExecuTorch python its ``model.pte`` (``executorch_export.py``).
In every format the scalars are folded into the weights (``fold.py``); the hopscotch format also writes each
norm's eps (exact), the others keep the one eps of the model (exact up to it). The checkpoint is written to a temporary
directory next to ``out_dir`` and renamed at the end: an interrupted export leaves nothing half-written.

A directory export holds only what its loader expects at the top level: the weights (``model*.safetensors``), its
config and generation config, the tokenizer when given, and for decilm the config class. Engines load every
top-level ``*.safetensors`` as weights (vLLM does), so the plan's provenance goes to a subfolder,
``hopscotch_plan/`` (``formats.export_plan_path`` finds it).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..arch import causal_lm, check_supported
from ..atomic import finish_directory, start_directory
from ..plan import SkipPlan
from .checks import check_export_args
from .fold import folded_weights
from .formats import (FORMATS, PLAN_SUBDIR, ExportError, check_format, decilm_config, hopscotch_config,
                      warn_single_eps)
from .gguf_export import export_gguf

__all__ = ["export_model", "ExportError", "FORMATS"]


def write_decilm_config_module(out: Path) -> None:
    """The config class a decilm export needs to load with trust_remote_code (config.json's auto_map names it)."""
    shutil.copyfile(Path(__file__).with_name("configuration_decilm.py"), out / "configuration_decilm.py")


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> Path:
    """A fresh temporary directory beside ``out_dir`` (``checks.check_export_args`` has checked the destination;
    stale partials of killed exports to it are removed, ``atomic.py``)."""
    return start_directory(out_dir)


def _finish(tmp: Path, out_dir: Path) -> None:
    """Put the export in place, with the marker listing its files (what a later overwrite may replace)."""
    finish_directory(tmp, out_dir, manifest="export_model")


def _write_shards(tensors: dict[str, torch.Tensor], materialize, out: Path, max_shard_size) -> None:
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    split = split_torch_state_dict_into_shards(tensors, max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        shard = {name: materialize(name) for name in names}
        save_file(shard, str(out / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                 "weight_map": split.tensor_to_filename}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _export_executorch(model, plan, out_dir: Path, *, tokenizer, overwrite, dtype, python, context) -> Path:
    from . import executorch_export as et

    check_format("executorch", causal_lm(model).config, plan)  # before anything is written
    python = et.find_python(python)
    et.check_context(context)
    warn_single_eps(plan, "executorch")
    tmp = _prepare_out_dir(out_dir, overwrite)
    try:
        params = et.write_checkpoint(model, plan, tmp, dtype)
        plan.save(tmp / PLAN_SUBDIR)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if python is not None:
            et.lower_exports(python, [tmp], context=context, dtype=params["dtype"])
        _finish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def export_model(model, plan: SkipPlan, out_dir: str | os.PathLike, *, format: str = "hopscotch", tokenizer=None,
                 overwrite: bool = False, max_shard_size: int | str = "5GB",
                 dtype: torch.dtype | str | None = None, gguf_tokenizer: str | os.PathLike | None = None,
                 executorch_python: str | os.PathLike | None = None, executorch_context: int = 2048) -> Path:
    """Write ``model`` with ``plan`` (skips and scalars, folded into the weights) to ``out_dir``; returns it.

    ``model`` is the loaded HF model (patched or not: its own weights are read, never changed). ``dtype`` casts
    the written weights (default: as loaded). ``tokenizer`` is saved alongside when given.
    ``format="gguf"`` writes one file, ``out_dir`` ending in ``.gguf`` (see ``gguf_export.export_gguf``: ``dtype``
    may also be ``"q8_0"``, ``"q4_0"`` ... or ``"source"``; ``gguf_tokenizer`` is the GGUF file whose tokenizer
    is carried over).
    ``format="executorch"`` writes ``model.pth`` + ``params.json``, and ``model.pte`` by ExecuTorch's Llama export
    run with ``executorch_python`` (default ``$HOPSCOTCH_EXECUTORCH_PYTHON``; neither: no .pte), its KV cache
    ``executorch_context`` tokens long.
    """
    if not isinstance(format, str) or format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; expected one of {', '.join(FORMATS)}")
    out_dir, max_shard_size = check_export_args(model, plan, out_dir, format=format, tokenizer=tokenizer,
                                                overwrite=overwrite, max_shard_size=max_shard_size, dtype=dtype,
                                                gguf_tokenizer=gguf_tokenizer)
    if format == "gguf":
        return export_gguf(model, plan, out_dir, dtype=dtype, overwrite=overwrite, gguf_tokenizer=gguf_tokenizer)
    if isinstance(dtype, str):
        raise ExportError(f"dtype {dtype!r} is for format='gguf' only; give a torch dtype for {format!r}")
    check_supported(model)
    plan.validate(model)
    lm = causal_lm(model)
    config = lm.config
    if format == "decilm":
        new_config = decilm_config(config, plan)  # refuses what it cannot represent, before anything is written
    if format == "executorch":
        return _export_executorch(model, plan, Path(out_dir), tokenizer=tokenizer, overwrite=overwrite, dtype=dtype,
                                  python=executorch_python, context=executorch_context)
    sd, fold = folded_weights(model, plan, keep_skipped=format == "vanilla")

    def materialize(name: str) -> torch.Tensor:
        return fold(name, dtype)

    out_dir = Path(out_dir)
    tmp = _prepare_out_dir(out_dir, overwrite)
    try:
        _write_shards(sd, materialize, tmp, max_shard_size)
        cfg = config.to_dict()
        cfg.pop("quantization_config", None)  # the written weights are plain tensors
        cfg.pop("_name_or_path", None)  # where the model was loaded from: a local path, not the export's business
        if dtype is not None:
            cfg["dtype"] = str(dtype).removeprefix("torch.")
        if format == "hopscotch":
            cfg = hopscotch_config(cfg, plan)
        else:
            warn_single_eps(plan, format)
        if format == "decilm":
            cfg = {**cfg, **new_config}
            write_decilm_config_module(tmp)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str))
        gen = getattr(lm, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(tmp)
        plan.save(tmp / PLAN_SUBDIR)  # provenance; its scalars are already folded into the weights
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _finish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
