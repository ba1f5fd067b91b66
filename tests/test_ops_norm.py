"""rms_norm and scaled_add_rms_norm (+ in-place form) against their references, in every dtype and on odd shapes."""

from __future__ import annotations

import pytest
import torch

import hopscotch_ext
from hopscotch_ext import reference as R
from tests.helpers.op_testing import (DEVICES, DTYPES, HIDDEN, SAME_BITS, TOKENS, assert_close_to_oracle, needs_cuda_kernels,
                        strided)

EPS = 1e-6


def _inputs(tokens, hidden, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g)
    res = torch.randn(tokens, hidden, generator=g) * 2
    w = torch.rand(hidden, generator=g) + 0.5
    b = torch.tensor(0.75)
    s = torch.tensor(1.25)
    return [t.to(device) for t in (x.to(dtype), res.to(dtype), w.to(dtype), b, s)]


def _f64(*ts):
    return [t.double() for t in ts]


def _check_scaled_add(x, res, w, b, s):
    """The op against the accuracy rule; returns its (normed, new_residual)."""
    normed, new_res = hopscotch_ext.scaled_add_rms_norm(x, res, w, b, s, EPS)
    ref_normed, ref_res = R.scaled_add_rms_norm_ref(x, res, w, b, s, EPS)
    # The float64 oracle normalises the rounded residual, as the op is defined to.
    _, o_res = R.scaled_add_rms_norm_ref(*_f64(x, res, w, b, s), EPS)
    assert_close_to_oracle(new_res, ref_res, o_res)
    assert_close_to_oracle(normed, ref_normed, R.rms_norm_ref(ref_res.double(), w.double(), EPS))
    return normed, new_res


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("tokens", TOKENS)
def test_scaled_add_rms_norm_matches_reference(tokens, hidden, dtype, device):
    needs_cuda_kernels(device)
    _check_scaled_add(*_inputs(tokens, hidden, dtype, device, seed=tokens * 7919 + hidden))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("tokens", TOKENS)
def test_rms_norm_matches_reference(tokens, hidden, dtype, device):
    needs_cuda_kernels(device)
    x, _, w, _, _ = _inputs(tokens, hidden, dtype, device, seed=tokens + hidden)
    out = hopscotch_ext.rms_norm(x, w, EPS)
    assert_close_to_oracle(out, R.rms_norm_ref(x, w, EPS), R.rms_norm_ref(x.double(), w.double(), EPS))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 769, 5125])
def test_inplace_variant_writes_x_and_residual(hidden, dtype, device):
    needs_cuda_kernels(device)
    x, res, w, b, s = _inputs(83, hidden, dtype, device, seed=hidden)
    normed, new_res = hopscotch_ext.scaled_add_rms_norm(x, res, w, b, s, EPS)
    x2, res2 = x.clone(), res.clone()
    assert hopscotch_ext.scaled_add_rms_norm_(x2, res2, w, b, s, EPS) is None
    # Same kernel body, same order of operations: bit-identical to the out-of-place op.
    torch.testing.assert_close(res2, new_res, rtol=0, atol=0)
    torch.testing.assert_close(x2, normed, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(dtype, device):
    needs_cuda_kernels(device)
    x, res, w, b, s = _inputs(83, 769, dtype, device, seed=5)
    xs, rs = strided(x), strided(res)
    normed, new_res = hopscotch_ext.scaled_add_rms_norm(xs, rs, w, b, s, EPS)
    exp_normed, exp_res = hopscotch_ext.scaled_add_rms_norm(x, res, w, b, s, EPS)
    torch.testing.assert_close(normed, exp_normed, **SAME_BITS)
    torch.testing.assert_close(new_res, exp_res, **SAME_BITS)
    torch.testing.assert_close(hopscotch_ext.rms_norm(xs, w, EPS), hopscotch_ext.rms_norm(x, w, EPS), **SAME_BITS)
    # In place through strided views: the wide buffers' padding columns stay untouched.
    hopscotch_ext.scaled_add_rms_norm_(xs, rs, w, b, s, EPS)
    torch.testing.assert_close(xs, exp_normed, **SAME_BITS)
    torch.testing.assert_close(rs, exp_res, **SAME_BITS)
    # Transposed input (leading dims permuted) works too.
    xt = x.reshape(83, 769).t().contiguous().t()
    torch.testing.assert_close(hopscotch_ext.rms_norm(xt, w, EPS), hopscotch_ext.rms_norm(x, w, EPS), **SAME_BITS)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [8200, 20000, 20001])
def test_long_rows(hidden, dtype, device):
    """Rows longer than the CUDA kernel keeps in shared memory (32 KB) are re-read in its second pass."""
    needs_cuda_kernels(device)
    x, res, w, b, s = _inputs(3, hidden, dtype, device, seed=hidden)
    normed, new_res = _check_scaled_add(x, res, w, b, s)
    assert_close_to_oracle(hopscotch_ext.rms_norm(x, w, EPS), R.rms_norm_ref(x, w, EPS),
                           R.rms_norm_ref(x.double(), w.double(), EPS))
    x2, res2 = x.clone(), res.clone()
    hopscotch_ext.scaled_add_rms_norm_(x2, res2, w, b, s, EPS)
    torch.testing.assert_close(res2, new_res, rtol=0, atol=0)
    torch.testing.assert_close(x2, normed, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 576), (2, 0, 576), (3, 5, 7, 64)])
def test_any_leading_shape_and_empty(shape, device):
    needs_cuda_kernels(device)
    x = torch.randn(shape, device=device)
    res = torch.randn(shape, device=device)
    w = torch.rand(shape[-1], device=device)
    b = torch.tensor(1.0, device=device)
    normed, new_res = hopscotch_ext.scaled_add_rms_norm(x, res, w, b, b, EPS)
    assert normed.shape == shape and new_res.shape == shape
    ref_normed, ref_res = R.scaled_add_rms_norm_ref(x, res, w, b, b, EPS)
    torch.testing.assert_close(normed, ref_normed)
    torch.testing.assert_close(new_res, ref_res)
    assert hopscotch_ext.rms_norm(x, w, EPS).shape == shape


@pytest.mark.parametrize("device", DEVICES)
def test_scalars_of_other_dtypes_and_one_element(device):
    needs_cuda_kernels(device)
    x, res, w, _, _ = _inputs(7, 576, torch.bfloat16, device, seed=11)
    b32, s32 = torch.tensor(0.5, device=device), torch.tensor(2.0, device=device)
    out32 = hopscotch_ext.scaled_add_rms_norm(x, res, w, b32, s32, EPS)
    out16 = hopscotch_ext.scaled_add_rms_norm(x, res, w, b32.bfloat16().reshape(1), s32.bfloat16(), EPS)
    for a, c in zip(out32, out16):
        torch.testing.assert_close(a, c, rtol=0, atol=0)  # 0.5 and 2.0 are exact in bf16


def test_b_zero_s_one_is_identity_on_residual():
    x, res, w, _, _ = _inputs(7, 576, torch.float32, "cpu", seed=3)
    _, new_res = hopscotch_ext.scaled_add_rms_norm(x, res, w, torch.tensor(0.0), torch.tensor(1.0), EPS)
    torch.testing.assert_close(new_res, res, rtol=0, atol=0)
