"""A GPTQ checkpoint with a plan's scalars folded into its quantization scales: nothing is requantized.

A GPTQ linear layer stores ``W[o, i] = scales[g(i), o] * (q[i, o] - z[g(i), o])``: one float16 scale per output
row and input group. The plan multiplies the output rows of o_proj / down_proj by a factor (``fold.py``: a kept
block's ``b / C``, 0 for a skipped block's o_proj), which is a multiplication of that row's scales: the packed
integers (``qweight``, ``qzeros``, ``g_idx``) are copied byte for byte, and the folded weights differ from the
exact ones only by the rounding of each new scale to the scales' dtype (float16: at most 2^-11 of the scale,
relative; ``fold_error`` measures it). A skipped block's scales become 0, so its o_proj is exactly zero.

The result is the ``vanilla`` format of a GPTQ model: the same architecture and tensor names, every norm with the
model's one eps (exact up to eps, ``fold.py``), the plan's provenance in ``hopscotch_plan/``; a GPTQ loader
(``GPTQModel.load``) loads it as it loads the source. To also skip the computation, apply
``SkipPlan.for_model(model, skipped_attention=plan.skipped_attention)`` (unit scalars) to the loaded model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..atomic import check_destination, finish_directory, manifest_files, start_directory
from ..plan import SkipPlan
from .fold import output_scales, weight_factor
from .formats import PLAN_SUBDIR, ExportError, warn_single_eps

__all__ = ["export_gptq", "fold_error", "gptq_quant_config"]

_FOLDED = ("scales", "bias")  # what a row factor multiplies in a GPTQ layer (the integers stay as they are)


def gptq_quant_config(checkpoint: str | os.PathLike) -> dict:
    """The checkpoint's GPTQ settings (config.json's ``quantization_config``, else ``quantize_config.json``);
    ExportError when it is not a GPTQ checkpoint."""
    path = Path(checkpoint)
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ExportError(f"{path} holds no config.json; expected a GPTQ checkpoint directory")
    qc = json.loads(cfg_path.read_text()).get("quantization_config")
    if qc is None and (path / "quantize_config.json").is_file():
        qc = json.loads((path / "quantize_config.json").read_text())
    method = (qc or {}).get("quant_method") or (qc or {}).get("method")
    if method != "gptq":
        raise ExportError(f"{path} is not a GPTQ checkpoint (quantization method {method!r}); expected 'gptq' "
                          "(GGUF files: `hopscotch export --format gguf --save-dtype source`)")
    return qc


def _tensor_files(path: Path) -> list[str]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    if (path / "model.safetensors").is_file():
        return ["model.safetensors"]
    raise ExportError(f"{path} holds no model.safetensors or model.safetensors.index.json")


def _layer_key(name: str) -> str | None:
    """The HF weight name whose plan factor applies to GPTQ tensor ``name`` (its ``scales`` / ``bias``)."""
    module, _, leaf = name.rpartition(".")
    return f"{module}.weight" if leaf in _FOLDED else None


def export_gptq(checkpoint: str | os.PathLike, plan: SkipPlan, out_dir: str | os.PathLike, *,
                overwrite: bool = False) -> Path:
    """Write GPTQ ``checkpoint`` with ``plan`` folded into its o_proj / down_proj scales to ``out_dir``; returns it.

    ``plan`` must fit the checkpoint's architecture (found by searching the GPTQ model, or any plan for this
    architecture). Every file of the checkpoint is carried over; only the scales (and biases) of the output
    projections change. The directory is built beside ``out_dir`` and renamed into place at the end.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import AutoConfig

    src = Path(checkpoint)
    gptq_quant_config(src)
    plan.validate(AutoConfig.from_pretrained(src))
    out = Path(out_dir)
    check_destination(out, overwrite=overwrite, inputs={"checkpoint": src}, error=ExportError,
                      foreign=lambda d: sorted(p.name for p in d.iterdir()
                                               if p.name not in set((manifest_files(d) or {}).get("files", []))))
    warn_single_eps(plan, "gptq")
    scales = output_scales(plan.scalar_tensor(), plan.skipped_attention, plan.skipped_mlp)
    files = _tensor_files(src)
    tmp = start_directory(out)
    try:
        for item in src.iterdir():
            if item.name not in files and item.name != PLAN_SUBDIR and item.is_file():
                shutil.copyfile(item, tmp / item.name)
        folded = 0
        for fname in files:
            tensors = {}
            with safe_open(str(src / fname), "pt") as f:
                meta = f.metadata()
                for name in f.keys():
                    t = f.get_tensor(name)
                    key = _layer_key(name)
                    factor = weight_factor(key, plan, scales) if key else None
                    if factor is not None:
                        if name.endswith(".weight"):
                            raise ExportError(f"{name} is not quantized; this export folds into GPTQ scales only")
                        t = (t.double() * factor).to(t.dtype) if factor else torch.zeros_like(t)
                        folded += 1
                    tensors[name] = t.contiguous()
            save_file(tensors, str(tmp / fname), metadata=meta)
        if not folded:
            raise ExportError(f"{src}: no o_proj / down_proj scales found (tensor names such as "
                              "'model.layers.0.self_attn.o_proj.scales' expected)")
        plan.save(tmp / PLAN_SUBDIR)  # provenance; the scalars are in the scales
        finish_directory(tmp, out, manifest="export_gptq")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def fold_error(checkpoint: str | os.PathLike, plan: SkipPlan, folded: str | os.PathLike) -> dict:
    """How far the folded checkpoint's scales are from the exact products ``scale * factor`` (float64), relative
    to each scale: ``{"max_rel": ..., "bound": half an ulp of 1 (2^-11 for float16), "dtype": ..., "other_tensors_equal": bool}``
    (every tensor that is not a folded scale or bias compared byte for byte)."""
    from safetensors import safe_open

    src, dst = Path(checkpoint), Path(folded)
    scales = output_scales(plan.scalar_tensor(), plan.skipped_attention, plan.skipped_mlp)
    worst, dtype, same = 0.0, None, True
    for fname in _tensor_files(src):
        with safe_open(str(src / fname), "pt") as a, safe_open(str(dst / fname), "pt") as b:
            for name in a.keys():
                x, y = a.get_tensor(name), b.get_tensor(name)
                key = _layer_key(name)
                factor = weight_factor(key, plan, scales) if key else None
                if factor is None:
                    same &= x.dtype == y.dtype and torch.equal(x, y)
                    continue
                exact = x.double() * factor
                nz = exact != 0
                if nz.any():
                    worst = max(worst, float(((y.double() - exact).abs()[nz] / exact.abs()[nz]).max()))
                same &= bool((y[~nz] == 0).all())
                dtype = y.dtype
    bound = torch.finfo(dtype).eps / 2 if dtype is not None else 0.0  # half an ulp at 1, relative
    return {"max_rel": worst, "bound": bound, "dtype": str(dtype).removeprefix("torch."), "other_tensors_equal": same}
