"""export_model's argument checks: types, the model and plan, what the format can express, and the destination.

Everything here runs before a weight is folded or a file written. The destination rules (``atomic.check_destination``):
``out_dir`` may not be the working directory or a parent of it, nor hold an input of the export (the plan file,
the model's directory, the tokenizer's, the GGUF file the tokenizer comes from); ``overwrite`` replaces only what
hopscotch wrote: a directory whose marker (``atomic.MANIFEST``) lists every file in it, or a gguf file hopscotch
wrote.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..atomic import MANIFEST, check_destination, manifest_files
from ..errors import as_path, check_arg, parse_size
from ..plan import SkipPlan
from .formats import FORMATS, ExportError, check_format
from .info import export_info, read_export_info

__all__ = ["check_cli_destination", "check_export_args", "export_inputs", "foreign_entries", "foreign_gguf"]



def foreign_entries(out: Path) -> list[str]:
    """What in the directory ``out`` hopscotch did not write (relative paths; empty: all of it is an export's)."""
    manifest = manifest_files(out)
    if manifest is None:
        return sorted(p.name for p in out.iterdir())  # not written by hopscotch at all
    listed = set(manifest["files"]) | {MANIFEST}
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and
                  str(p.relative_to(out)) not in listed)


def foreign_gguf(out: Path) -> list[str]:
    info = read_export_info(out)
    return [] if info is not None and info.format == "gguf" else [out.name]


def export_inputs(model, plan: SkipPlan, tokenizer=None, gguf_tokenizer=None) -> dict[str, Path | None]:
    """The files an export reads, by what they are: none of them may lie inside its destination."""
    from ..arch import causal_lm

    def local(p) -> Path | None:
        return Path(p) if p and Path(p).exists() else None

    src = getattr(getattr(causal_lm(model), "config", None), "_name_or_path", None)
    inputs = {"plan": plan.source, "model": local(src),
              "tokenizer": local(getattr(tokenizer, "name_or_path", None)),
              "GGUF tokenizer": local(gguf_tokenizer)}
    if plan.source is not None:
        inputs["plan's scalars"] = local(Path(plan.source).with_suffix(".safetensors"))
    return inputs


def check_export_args(model, plan, out_dir, *, format, tokenizer, overwrite, max_shard_size, dtype,
                      gguf_tokenizer) -> tuple[Path, int]:
    """(out_dir as a Path, max_shard_size in bytes) after every check; raises ExportError or ArgumentError."""
    from ..arch import causal_lm, check_supported

    f = "export_model"
    check_arg(isinstance(model, nn.Module), f, "model", model, "a loaded transformers causal LM (torch.nn.Module)")
    check_arg(isinstance(plan, SkipPlan), f, "plan", plan, "a SkipPlan (SkipPlan.load(path) reads one)")
    out = as_path(out_dir, f, "out_dir")
    check_arg(isinstance(format, str) and format in FORMATS, f, "format", format, f"one of {', '.join(FORMATS)}")
    check_arg(isinstance(overwrite, bool), f, "overwrite", overwrite, "True or False")
    size = parse_size(max_shard_size, "max_shard_size")
    check_arg(dtype is None or isinstance(dtype, (str, torch.dtype)), f, "dtype", dtype,
              "None, a torch.dtype, or for format='gguf' one of gguf_export.GGUF_DTYPES (f32 ... q8_0, q4_0, source)")
    check_arg(tokenizer is None or hasattr(tokenizer, "save_pretrained"), f, "tokenizer", tokenizer,
              "None or a transformers tokenizer")
    if gguf_tokenizer is not None:
        as_path(gguf_tokenizer, f, "gguf_tokenizer")
    exported = export_info(model)  # set by hopscotch.models on a model loaded from an export
    if exported is not None:
        raise ExportError(f"the model is a {exported.describe()} ({exported.path}): its plan is already in its "
                          "weights; export the original model with the plan instead")
    check_supported(model)
    plan.validate(model)
    check_format(format, causal_lm(model).config, plan)
    gguf = format == "gguf"
    if gguf and out.suffix != ".gguf":
        raise ExportError(f"format='gguf' writes one file: {out} should end in .gguf")
    check_destination(out, overwrite=overwrite, inputs=export_inputs(model, plan, tokenizer, gguf_tokenizer),
                      foreign=foreign_gguf if gguf else foreign_entries, name="out_dir", file=gguf,
                      error=ExportError)
    return out, size


def check_cli_destination(out: str | os.PathLike, *, overwrite: bool, gguf: bool,
                          inputs: dict[str, str | os.PathLike | None]) -> None:
    """The same destination rules for the command line, before anything is loaded (messages name --out)."""
    check_destination(Path(out), overwrite=overwrite, inputs=inputs, foreign=foreign_gguf if gguf else foreign_entries,
                      name="--out", file=gguf, error=ExportError)
