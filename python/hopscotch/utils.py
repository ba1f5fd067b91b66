"""Small helpers shared across the user layer."""

from __future__ import annotations

import torch

__all__ = ["model_device", "model_dtype", "parse_dtype"]

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"bf16"`` / ``"bfloat16"`` / ``torch.bfloat16`` -> ``torch.bfloat16`` (and float32, float16)."""
    if isinstance(name, torch.dtype):
        return name
    key = str(name).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of float32, float16, bfloat16")
    return _DTYPES[key]


def model_device(model) -> torch.device:
    """Where the model's inputs go (its first parameter's device)."""
    return next(model.parameters()).device


def model_dtype(model) -> torch.dtype:
    """The dtype of the model's weights (its first parameter's)."""
    return next(model.parameters()).dtype
