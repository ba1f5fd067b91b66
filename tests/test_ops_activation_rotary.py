"""silu_and_mul and rotary_embedding against their references, in every dtype and on odd shapes."""

from __future__ import annotations

import pytest
import torch

import hopscotch_ext
from hopscotch_ext import reference as R
from tests.helpers.op_testing import (DEVICES, DTYPES, HIDDEN, TOKENS, assert_close_to_oracle, assert_same_bits,
                                      cos_sin_table, needs_cuda_kernels, strided)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", HIDDEN)
@pytest.mark.parametrize("tokens", TOKENS)
def test_silu_and_mul_matches_reference(tokens, d, dtype, device):
    needs_cuda_kernels(device)
    g = torch.Generator().manual_seed(tokens * 31 + d)
    gate_up = (torch.randn(tokens, 2 * d, generator=g) * 3).to(dtype).to(device)
    out = hopscotch_ext.silu_and_mul(gate_up)
    assert out.shape == (tokens, d)
    assert_close_to_oracle(out, R.silu_and_mul_ref(gate_up), R.silu_and_mul_ref(gate_up.double()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul_shapes_strides_extremes(dtype, device):
    needs_cuda_kernels(device)
    for shape in [(0, 10), (2, 3, 0), (2, 5, 2 * 83)]:
        x = torch.randn(shape, device=device).to(dtype)
        torch.testing.assert_close(hopscotch_ext.silu_and_mul(x), R.silu_and_mul_ref(x))
    x = torch.randn(7, 2 * 769, device=device).to(dtype)
    torch.testing.assert_close(hopscotch_ext.silu_and_mul(strided(x)), hopscotch_ext.silu_and_mul(x), rtol=0, atol=0)
    big = torch.tensor([[-1e4, -80.0, 0.0, 80.0, 1.0, 1.0, 1.0, 1.0]], device=device).to(dtype)
    out = hopscotch_ext.silu_and_mul(big)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, R.silu_and_mul_ref(big))


ROTARY_CASES = [  # (q_heads, kv_heads, head_size, rot_dim)
    (9, 3, 64, 64),  # SmolLM2 (GQA)
    (32, 8, 128, 128),  # Llama-3-8B
    (4, 4, 128, 64),  # MHA, partial rotary
    (3, 1, 80, 80),  # head size that is not a power of two
    (5, 1, 48, 20),  # half = 10: not whole 16-byte chunks (the CUDA kernel's scalar path)
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ROTARY_CASES)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("cache_dtype", ["float32", "same"])
def test_rotary_matches_reference(tokens, case, dtype, device, cache_dtype):
    needs_cuda_kernels(device)
    qh, kh, hs, rot = case
    g = torch.Generator().manual_seed(tokens + qh + hs)
    max_pos = 4096
    cache = cos_sin_table(max_pos, rot, torch.float32 if cache_dtype == "float32" else dtype, device)
    pos = torch.randint(0, max_pos, (tokens,), generator=g).to(device)
    q = torch.randn(tokens, qh, hs, generator=g).to(dtype).to(device)
    k = torch.randn(tokens, kh, hs, generator=g).to(dtype).to(device)
    q_out, k_out = q.clone(), k.clone()
    assert hopscotch_ext.rotary_embedding(pos, q_out, k_out, cache) is None
    for before, after in ((q, q_out), (k, k_out)):
        assert_same_bits(after, R.apply_rotary_ref(before, pos, cache))
        torch.testing.assert_close(after[..., rot:], before[..., rot:], rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_batched_strided_and_query_only(dtype, device):
    needs_cuda_kernels(device)
    batch, seq, qh, kh, hs = 3, 17, 9, 3, 64
    cache = cos_sin_table(128, hs, torch.float32, device)
    pos = torch.arange(seq, device=device).repeat(batch, 1) + torch.tensor([[0], [5], [40]], device=device)
    # q and k as strided views into one fused qkv projection output, as a fused attention produces them.
    qkv = torch.randn(batch, seq, (qh + 2 * kh) * hs, device=device).to(dtype)
    q = qkv[..., : qh * hs].view(batch, seq, qh, hs)
    k = qkv[..., qh * hs: (qh + kh) * hs].view(batch, seq, kh, hs)
    v_before = qkv[..., (qh + kh) * hs:].clone()
    q_before, k_before = q.clone(), k.clone()
    hopscotch_ext.rotary_embedding(pos.int(), q, k, cache)
    for before, after in ((q_before, q), (k_before, k)):
        assert_same_bits(after, R.apply_rotary_ref(before, pos, cache))
    torch.testing.assert_close(qkv[..., (qh + kh) * hs:], v_before, rtol=0, atol=0)  # v untouched
    q2 = torch.randn(5, qh, hs, device=device).to(dtype)
    q2_before = q2.clone()
    hopscotch_ext.rotary_embedding(torch.arange(5, device=device), q2, None, cache)
    assert_same_bits(q2, R.apply_rotary_ref(q2_before, torch.arange(5, device=device), cache))
    empty = torch.empty(0, qh, hs, device=device, dtype=dtype)
    hopscotch_ext.rotary_embedding(torch.empty(0, dtype=torch.long, device=device), empty, None, cache)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ROTARY_CASES)
@pytest.mark.parametrize("inverse", [False, True])
def test_rotary_out_matches_reference_and_in_place(case, dtype, device, inverse):
    """Out of place: the reference's accuracy; forward: the in-place op's bits; inverse: undoes the forward."""
    needs_cuda_kernels(device)
    qh, _, hs, rot = case
    g = torch.Generator().manual_seed(qh * hs + inverse)
    cache = cos_sin_table(512, rot, torch.float32, device)
    pos = torch.randint(0, 512, (2, 9), generator=g).to(device)
    x = torch.randn(2, 9, qh, hs, generator=g).to(dtype).to(device)
    x_before = x.clone()
    out = hopscotch_ext.rotary_embedding_out(pos, x, cache, inverse)
    torch.testing.assert_close(x, x_before, rtol=0, atol=0)  # input untouched
    assert out.is_contiguous() and out.shape == x.shape
    assert_same_bits(out, R.rotary_embedding_out_ref(pos, x, cache, inverse))
    if not inverse:
        in_place = x.clone()
        hopscotch_ext.rotary_embedding(pos, in_place, None, cache)
        torch.testing.assert_close(out, in_place, rtol=0, atol=0)
    if dtype == torch.float32:
        back = hopscotch_ext.rotary_embedding_out(pos, out, cache, not inverse)
        torch.testing.assert_close(back, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_rotary_out_reads_any_layout(device):
    """q / k as slices of a fused qkv output, a transposed view, and every other feature: same bits as contiguous."""
    needs_cuda_kernels(device)
    cache = cos_sin_table(64, 64, torch.float32, device)
    pos = torch.arange(12, device=device).view(2, 6)
    qkv = torch.randn(2, 6, 5 * 64, device=device)
    views = [qkv[..., 64:192].view(2, 6, 2, 64),
             torch.randn(2, 2, 6, 64, device=device).transpose(1, 2),
             torch.randn(2, 6, 2, 128, device=device)[..., ::2]]
    for v in views:
        assert not v.is_contiguous()
        torch.testing.assert_close(hopscotch_ext.rotary_embedding_out(pos, v, cache),
                                   hopscotch_ext.rotary_embedding_out(pos, v.contiguous(), cache), rtol=0, atol=0)


def test_rotary_out_gradients():
    cache = cos_sin_table(64, 48, torch.float64, "cpu")
    pos = torch.randint(0, 64, (3, 5))
    x = torch.randn(3, 5, 2, 64, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: hopscotch_ext.rotary_embedding_out(pos, a, cache), [x])
    assert torch.autograd.gradgradcheck(lambda a: hopscotch_ext.rotary_embedding_out(pos, a, cache, True), [x])
    # A rotation preserves norms, so the gradient of ||y||^2 / 2 is x itself (float32 here).
    xf = x.detach().float().requires_grad_()
    hopscotch_ext.rotary_embedding_out(pos, xf, cache.float()).pow(2).sum().div(2).backward()
    torch.testing.assert_close(xf.grad, xf.detach())
    with pytest.raises(RuntimeError, match="no gradient w.r.t. cos_sin_cache"):
        hopscotch_ext.rotary_embedding_out(pos, x, cache.clone().requires_grad_()).sum().backward()


# rotary_embedding_kv_cache: (batch, tokens, q_heads, kv_heads, head_size, rot_dim, capacity)
KV_CACHE_CASES = [
    (1, 1, 9, 3, 64, 64, 5),  # SmolLM2 decode, batch 1
    (16, 1, 32, 8, 128, 128, 33),  # Llama-3-8B decode, batch 16
    (3, 7, 4, 4, 128, 64, 19),  # MHA, partial rotary, a prefill of 7 tokens
    (2, 5, 5, 1, 48, 20, 11),  # half = 10 (the CUDA kernel's scalar path), odd capacity
]


def _qkv_views(batch, tokens, qh, kh, hs, dtype, device, g):
    """q, k, v as strided views into one fused qkv projection output, as the patched attention makes them."""
    qkv = torch.randn(batch, tokens, (qh + 2 * kh) * hs, generator=g).to(dtype).to(device)
    q = qkv[..., : qh * hs].view(batch, tokens, qh, hs)
    k = qkv[..., qh * hs: (qh + kh) * hs].view(batch, tokens, kh, hs)
    v = qkv[..., (qh + kh) * hs:].view(batch, tokens, kh, hs)
    return q, k, v


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", KV_CACHE_CASES)
@pytest.mark.parametrize("cache_dtype", ["float32", "same"])
def test_rotary_kv_cache_matches_reference_and_writes_only_its_slots(case, dtype, device, cache_dtype):
    needs_cuda_kernels(device)
    batch, tokens, qh, kh, hs, rot, cap = case
    g = torch.Generator().manual_seed(batch * 100 + tokens + hs)
    table = cos_sin_table(512, rot, torch.float32 if cache_dtype == "float32" else dtype, device)
    pos = torch.randint(0, 512, (batch, tokens), generator=g).to(device)
    q, k, v = _qkv_views(batch, tokens, qh, kh, hs, dtype, device, g)
    assert not k.is_contiguous() or batch * tokens == 1
    start = cap - tokens - 1  # the tokens land in the middle: slots on both sides must stay untouched
    slots = torch.arange(start, start + tokens, device=device)
    kc = torch.randn(batch, kh, cap, hs, generator=g).to(dtype).to(device)
    vc = torch.randn(batch, kh, cap, hs, generator=g).to(dtype).to(device)
    q_before, kc_before, vc_before, k_before, v_before = q.clone(), kc.clone(), vc.clone(), k.clone(), v.clone()
    assert hopscotch_ext.rotary_embedding_kv_cache(pos, q, k, v, table, kc, vc, slots) is None
    assert_same_bits(q, R.apply_rotary_ref(q_before, pos, table))
    written = kc[:, :, start:start + tokens].transpose(1, 2)
    assert_same_bits(written, R.apply_rotary_ref(k_before, pos, table))
    torch.testing.assert_close(vc[:, :, start:start + tokens].transpose(1, 2), v_before, rtol=0, atol=0)
    torch.testing.assert_close(written[..., rot:], k_before[..., rot:], rtol=0, atol=0)  # partial rotary
    torch.testing.assert_close(k, k_before, rtol=0, atol=0)  # k and v are only read
    torch.testing.assert_close(v, v_before, rtol=0, atol=0)
    others = torch.ones(cap, dtype=torch.bool)
    others[start:start + tokens] = False
    for after, before in ((kc, kc_before), (vc, vc_before)):
        torch.testing.assert_close(after[:, :, others], before[:, :, others], rtol=0, atol=0)
    # The same bits as the in-place rotary on q and k (one rotation, two destinations).
    q2, k2 = q_before.clone(), k_before.contiguous()
    hopscotch_ext.rotary_embedding(pos, q2, k2, table)
    torch.testing.assert_close(q, q2, rtol=0, atol=0)
    torch.testing.assert_close(written, k2, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_rotary_kv_cache_refuses_bad_inputs(device):
    needs_cuda_kernels(device)
    table = cos_sin_table(16, 8, torch.float32, device)
    q, k, v = (torch.randn(2, 3, h, 8, device=device) for h in (4, 2, 2))
    kc, vc = torch.zeros(2, 2, 6, 8, device=device), torch.zeros(2, 2, 6, 8, device=device)
    pos, slots = torch.arange(6, device=device).view(2, 3), torch.arange(3, device=device)
    op = hopscotch_ext.rotary_embedding_kv_cache
    cases = [
        (lambda: op(pos.view(-1), q, k, v, table, kc, vc, slots), r"positions has shape \[6\]; expected \[batch"),
        (lambda: op(pos, q, k, v, table, kc[:, :1], vc, slots), r"key_cache has shape \[2, 1, 6, 8\].*expected \[2, 2,"),
        (lambda: op(pos, q, k, v, table, kc, vc[:, :, :5], slots), r"value_cache has shape .*expected the same shape"),
        (lambda: op(pos, q, k, v[..., :4], table, kc, vc, slots), r"value has shape .*expected key's shape"),
        (lambda: op(pos, q, k, v, table, kc, vc, slots[:2]), r"slots has shape \[2\]; expected \[3\]"),
        (lambda: op(pos, q, k, v, table, kc, vc, slots.float()), r"slots has dtype Float; expected int64"),
        (lambda: op(pos, q, k, v, table, kc.double(), vc, slots), r"key_cache has dtype Double but query"),
    ]
    for call, message in cases:
        with pytest.raises(RuntimeError, match=message):
            call()
    with pytest.raises(RuntimeError, match=r"slots holds 6; expected 0 <= slot < 6"):  # CUDA: before launch
        op(pos, q, k, v, table, kc, vc, slots + 4)
    with pytest.raises(RuntimeError, match="writes in place and has no backward"):
        op(pos, q.requires_grad_(), k, v, table, kc, vc, slots)
