"""Shared pieces of the kernel tests: devices, dtypes, shapes and the accuracy rule of DESIGN.md invariant 3."""

from __future__ import annotations

import pytest
import torch

import hopscotch_ext

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOKENS = [1, 7, 83, 1000]
HIDDEN = [64, 576, 769, 4096, 5125]

_NO_GPU = "no CUDA GPU on this machine (the CUDA kernels are compiled, not run, here)"
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=_NO_GPU)]),
]

needs_extension = pytest.mark.skipif(
    not hopscotch_ext.EXTENSION_LOADED, reason=f"compiled extension not loaded: {hopscotch_ext.info()['load_error']}"
)


def needs_cuda_kernels(device: str) -> None:
    if device == "cuda" and "cuda" not in hopscotch_ext.info()["backends"]:
        pytest.skip("the extension was built without CUDA kernels")


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    return (a.double() - b.double()).abs().max().item()


def assert_close_to_oracle(out: torch.Tensor, ref_same_dtype: torch.Tensor, oracle64: torch.Tensor) -> None:
    """Invariant 3: kernel error <= 2 x (same-dtype reference error) + floor, both against float64.

    Floor: one unit in the last place of the largest output value. The kernel and the reference both
    compute in float32 and round once, but sum in a different order (vector lanes, per-thread partial
    sums), so an output can round to the neighbouring representable value; where the reference happens
    to be exact (error 0) the doubled reference error alone would refuse that one-ulp difference.
    """
    assert not torch.isnan(out).any(), "kernel produced NaN"
    assert out.shape == oracle64.shape and out.dtype == ref_same_dtype.dtype
    err_kernel = max_err(out, oracle64)
    err_ref = max_err(ref_same_dtype, oracle64)
    scale = oracle64.abs().max().item() if oracle64.numel() else 0.0
    floor = torch.finfo(out.dtype).eps * scale
    assert err_kernel <= 2 * err_ref + floor, (
        f"kernel error {err_kernel:.3e} > 2 x reference error {err_ref:.3e} + floor {floor:.3e} ({out.dtype})")


def strided(t: torch.Tensor, pad: int = 3) -> torch.Tensor:
    """A non-contiguous view with the same values: a column slice of a wider buffer."""
    wide = torch.empty(*t.shape[:-1], t.shape[-1] + pad, dtype=t.dtype, device=t.device)
    wide[..., : t.shape[-1]] = t
    view = wide[..., : t.shape[-1]]
    assert not view.is_contiguous() or t.numel() == 0 or t.shape[-1] == 0
    return view
