"""silu_gate_up (the fused gated-MLP op) against its reference: every dtype, odd shapes, both kernel paths (fused
decode kernel up to 2 tokens on the CPU and 16 on CUDA, GEMM + silu_and_mul above), strided inputs, gradients
and torch.compile."""

from __future__ import annotations

import pytest
import torch

import hopscotch_ext
from hopscotch_ext import reference as R
from tests.helpers.op_testing import (DEVICES, DTYPES, MLP_SHAPES, MLP_TOKENS, SAME_BITS, assert_close_to_oracle,
                        needs_cuda_kernels, strided)


def _inputs(tokens, hidden, inter, dtype, device, seed, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g)
    # Weights scaled as a trained layer's (outputs of order one), so that silu sees both signs and the tails.
    w = torch.randn(2 * inter, hidden, generator=g) * hidden ** -0.5 * 2
    b = torch.randn(2 * inter, generator=g) * 0.5 if bias else None
    return [None if t is None else t.to(dtype).to(device) for t in (x, w, b)]


def _oracle(x, w, b):
    return R.silu_gate_up_ref(x.double(), w.double(), None if b is None else b.double())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", MLP_SHAPES, ids=[f"h{h}-i{i}" for h, i in MLP_SHAPES])
@pytest.mark.parametrize("tokens", MLP_TOKENS)
def test_silu_gate_up_matches_reference(tokens, shape, dtype, device):
    """Accuracy rule of op_testing: error <= 2 x the unfused torch composition's error (same dtype) + 1 ulp, both
    against float64. The composition rounds gate and up to the dtype before the activation; the fused decode
    kernel keeps them in float32, so it is usually the more accurate of the two."""
    needs_cuda_kernels(device)
    hidden, inter = shape
    x, w, b = _inputs(tokens, hidden, inter, dtype, device, seed=tokens * 131 + hidden, bias=tokens % 2 == 1)
    out = hopscotch_ext.silu_gate_up(x, w, b)
    assert out.shape == (tokens, inter)
    assert_close_to_oracle(out, R.silu_gate_up_ref(x, w, b), _oracle(x, w, b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", [1, 2, 16, 40])
def test_silu_gate_up_ignores_what_lies_beyond_a_strided_row(tokens, dtype, device):
    """NaN in the memory past each row of a row-strided x (hidden 769, not a multiple of 8) must not reach the
    output: torch's CPU bfloat16 GEMM reads it there (and multiplies it by zero) unless x is made contiguous."""
    needs_cuda_kernels(device)
    hidden, inter = 769, 133
    x, w, b = _inputs(tokens, hidden, inter, dtype, device, seed=tokens)
    wide = torch.full((tokens, hidden + 3), float("nan"), dtype=dtype, device=device)
    view = wide[:, :hidden]
    view.copy_(x)
    for impl in (hopscotch_ext.silu_gate_up, R.silu_gate_up_ref):
        out = impl(view, w, b)
        assert not out.isnan().any(), f"{impl.__name__}: NaN from beyond the rows"
        torch.testing.assert_close(out, impl(x, w, b), **SAME_BITS)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", [1, 2, 16, 40])
def test_silu_gate_up_strided_batched_and_empty(tokens, dtype, device):
    needs_cuda_kernels(device)
    hidden, inter = 769, 133
    x, w, b = _inputs(tokens, hidden, inter, dtype, device, seed=tokens)
    expect = hopscotch_ext.silu_gate_up(x, w, b)
    # A column slice of a wider buffer, and every other column of one (non-contiguous even for one token).
    every_other = torch.empty(tokens, 2 * hidden, dtype=dtype, device=device)[:, ::2]
    every_other.copy_(x)
    for view in ((strided(x),) if tokens > 1 else ()) + (every_other,):
        torch.testing.assert_close(hopscotch_ext.silu_gate_up(view, w, b), expect, **SAME_BITS)
    # Leading batch dimensions are flattened into tokens.
    torch.testing.assert_close(hopscotch_ext.silu_gate_up(x.view(1, tokens, hidden), w, b),
                               expect.view(1, tokens, inter), **SAME_BITS)
    assert hopscotch_ext.silu_gate_up(x[:0], w, b).shape == (0, inter)
    zero_hidden = hopscotch_ext.silu_gate_up(x[:, :0], w[:, :0], b)  # x @ W^T = 0: silu(b_gate) * b_up
    torch.testing.assert_close(zero_hidden, R.silu_and_mul_ref(b.expand(tokens, -1)))


@pytest.mark.parametrize("tokens", [2, 5, 20])
def test_gradcheck_silu_gate_up(tokens):
    """float64 gradcheck through both forward paths, w.r.t. x, the weight and the bias."""
    g = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, 13, generator=g, dtype=torch.float64, requires_grad=True)
    w = (torch.randn(2 * 7, 13, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    b = torch.randn(2 * 7, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(hopscotch_ext.silu_gate_up, [x, w, b])
    assert torch.autograd.gradcheck(lambda a, c: hopscotch_ext.silu_gate_up(a, c), [x, w])


def test_silu_gate_up_float32_gradients_match_reference_autograd():
    x, w, b = _inputs(9, 576, 96, torch.float32, "cpu", seed=5)
    grads = []
    for fn in (hopscotch_ext.silu_gate_up, R.silu_gate_up_ref):
        xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))
        fn(xr, wr, br).square().mean().backward()
        grads.append((xr.grad, wr.grad, br.grad))
    for a, c in zip(*grads):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-6)


def test_silu_gate_up_under_torch_compile_fullgraph():
    x, w, b = _inputs(4, 64, 96, torch.float32, "cpu", seed=9)
    torch._dynamo.reset()
    compiled = torch.compile(lambda a: hopscotch_ext.silu_gate_up(a, w, b) * 2, fullgraph=True)
    torch.testing.assert_close(compiled(x), hopscotch_ext.silu_gate_up(x, w, b) * 2, rtol=0, atol=0)
