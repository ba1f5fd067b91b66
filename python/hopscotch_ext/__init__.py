"""hopscotch_ext: the kernels as Python functions.

Loads the compiled ``_C`` module (which registers the ops in ``torch.ops.hopscotch_ext``). If it cannot load
(not built, or built against another torch), the package still imports, the same ops are registered with the
pure-torch references of ``hopscotch_ext.reference`` as their implementation, and one warning says why and how to
rebuild. ``HOPSCOTCH_DISABLE_EXTENSION=1`` forces that fallback (to test it, or to rule the kernels out). This is
the only place that chooses an implementation: ``torch.ops.hopscotch_ext.<op>``, ``hopscotch_ext.ops`` and
``hopscotch_ext.functional`` work the same either way (``info()["loaded"]`` and ``reference_calls()`` say which
one ran).
"""

from __future__ import annotations

import importlib
import os
import warnings
from typing import Any

import torch

_REBUILD_HINT = ("rebuild with `pip install --no-build-isolation -e .` in the repository "
                 "(see README.md); until then the slower pure-torch references are used")

from . import ops, reference  # noqa: E402  (defines the schemas; registers nothing until ops.register)

_load_error: str | None = None

try:
    if os.environ.get("HOPSCOTCH_DISABLE_EXTENSION", "") not in ("", "0"):
        raise ImportError("disabled by HOPSCOTCH_DISABLE_EXTENSION")
    # Importing _C registers torch.ops.hopscotch_ext.* as a side effect.
    _C: Any = importlib.import_module(f"{__name__}._C")

    _built_torch = _C.build_info().get("torch_version", "unknown")
    if _built_torch != torch.__version__:
        # The ops did register, but an extension built against another torch may crash: do not use it.
        _load_error = (f"hopscotch_ext._C was built against torch {_built_torch} but torch "
                       f"{torch.__version__} is installed")
        _C = None
    else:
        _missing = [name for name in ops.SCHEMAS if not hasattr(torch.ops.hopscotch_ext, name)]
        if _missing:  # built from older sources: the compiled library lacks ops this Python code calls
            _load_error = f"hopscotch_ext._C lacks the ops {_missing} (it was built from older sources)"
            _C = None
except (ImportError, OSError) as exc:  # not built, or undefined symbols from another torch
    _C = None
    _load_error = f"hopscotch_ext._C could not be loaded ({exc})"

if _load_error is not None:
    warnings.warn(f"{_load_error}; {_REBUILD_HINT}", RuntimeWarning, stacklevel=2)

# Informational only: the registration below decides, callers never branch on it.
EXTENSION_LOADED: bool = _C is not None

ops.register(compiled=EXTENSION_LOADED)

from . import functional  # noqa: E402
from .functional import add_rms_norm, rotate_qk, silu_gate_up  # noqa: E402
from .ops import (reference_calls, rms_norm, rotary_embedding, rotary_embedding_kv_cache,  # noqa: E402
                  rotary_embedding_out, scaled_add_rms_norm, scaled_add_rms_norm_, silu_and_mul)


def info() -> dict[str, Any]:
    """What was built and what loaded: torch version built against, compiled backends, CUDA archs."""
    d: dict[str, Any] = {
        "loaded": EXTENSION_LOADED,
        # What serves torch.ops.hopscotch_ext.*: the compiled kernels or the pure-torch references.
        "implementation": "compiled" if EXTENSION_LOADED else "reference",
        "load_error": _load_error,
        "torch_version_runtime": torch.__version__,
        "cuda_available_runtime": torch.cuda.is_available(),
    }
    if _C is not None:
        built = dict(_C.build_info())
        d.update({
            "torch_version_built": built["torch_version"],
            "backends": list(built["backends"]),
            "cuda_archs": [a for a in built["cuda_archs"].replace(" ", ";").split(";") if a],
            "cuda_version_built": built["cuda_version"] or None,
            "compiler": built.get("compiler"),
        })
    else:
        d.update({"torch_version_built": None, "backends": [], "cuda_archs": [], "cuda_version_built": None})
    return d


__all__ = [
    "EXTENSION_LOADED",
    "add_rms_norm",
    "functional",
    "info",
    "ops",
    "reference",
    "reference_calls",
    "rms_norm",
    "rotary_embedding",
    "rotary_embedding_kv_cache",
    "rotary_embedding_out",
    "rotate_qk",
    "scaled_add_rms_norm",
    "scaled_add_rms_norm_",
    "silu_and_mul",
    "silu_gate_up",
]
