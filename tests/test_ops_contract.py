"""The ops' argument contract, the same for the compiled CPU and CUDA kernels and the reference fallback
(docs/ARCHITECTURE.md §2.10): written arguments may not overlap themselves or another argument; a position or slot
outside its range is refused (never wrapped, never a crash); int32 indices, float64, and caches that are unaligned or
not contiguous give the reference's bits. These tests run with the extension loaded and, in CI, once without it."""

from __future__ import annotations

import pytest
import torch

import hopscotch_ext
from hopscotch_ext import reference as R
from tests.helpers.op_testing import DEVICES, EPS, cos_sin_table, needs_cuda_kernels

ops = torch.ops.hopscotch_ext


def _kv_args(device, dtype=torch.float32, batch=2, tokens=3, cap=6):
    g = torch.Generator().manual_seed(5)
    table = cos_sin_table(16, 8, torch.float32, device)
    q, k, v = (torch.randn(batch, tokens, h, 8, generator=g).to(dtype).to(device) for h in (4, 2, 2))
    kc, vc = (torch.zeros(batch, 2, cap, 8, dtype=dtype, device=device) for _ in range(2))
    pos = torch.arange(batch * tokens, device=device).view(batch, tokens)
    return pos, q, k, v, table, kc, vc, torch.arange(tokens, device=device)


# ---- written arguments ----------------------------------------------------------------------------------------


def _overlap_cases(device):
    """(call, message) for every written argument of every op that writes one: stored twice, or shared."""
    pos, q, k, v, table, kc, vc, slots = _kv_args(device)
    x, res, w = torch.randn(3, 8, device=device), torch.randn(3, 8, device=device), torch.rand(8, device=device)
    b = torch.tensor(0.5, device=device)
    q_expanded = q[:1].expand(2, -1, -1, -1)  # one batch row seen twice: rotated twice on the CPU, a race on CUDA
    kv = torch.zeros(2, 2, 6, 8, device=device)
    kv3 = torch.zeros(2, 2, 3, 8, device=device)  # capacity 3: key may then be a view of it
    internal = "the op writes it, so expected no element stored twice"
    return [
        (lambda: ops.scaled_add_rms_norm_(x[:1].expand(3, 8), res, w, b, b, EPS), "x has shape .3, 8.*" + internal),
        (lambda: ops.scaled_add_rms_norm_(x, res[:1].expand(3, 8), w, b, b, EPS), "residual has shape.*" + internal),
        (lambda: ops.scaled_add_rms_norm_(x, x, w, b, b, EPS), "x and residual share memory"),
        (lambda: ops.scaled_add_rms_norm_(x, res, x[0], b, b, EPS), "x and weight share memory"),
        (lambda: ops.rotary_embedding(pos, q_expanded, k, table), "rotary_embedding: query has shape.*" + internal),
        (lambda: ops.rotary_embedding(pos, q, k[:1].expand(2, -1, -1, -1), table), "key has shape.*" + internal),
        (lambda: ops.rotary_embedding(pos, q, q, table), "query and key share memory"),
        (lambda: ops.rotary_embedding_kv_cache(pos, q_expanded, k, v, table, kc, vc, slots),
         "rotary_embedding_kv_cache: query has shape .2, 3, 4, 8. and strides .0, .*" + internal),
        (lambda: ops.rotary_embedding_kv_cache(pos, q, k, v, table, kv, kv, slots),
         "key_cache and value_cache share memory"),
        (lambda: ops.rotary_embedding_kv_cache(pos, q, k, v, table, kc, vc[:1].expand(2, -1, -1, -1), slots),
         "value_cache has shape.*" + internal),
        (lambda: ops.rotary_embedding_kv_cache(pos, k, k, v, table, kc, vc, slots), "query and key share memory"),
        (lambda: ops.rotary_embedding_kv_cache(pos, q, kv3.view(2, 3, 2, 8), v, table, kv3, vc[:, :, :3], slots),
         "key_cache and key share memory"),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_every_written_argument_is_refused_when_it_overlaps(device):
    needs_cuda_kernels(device)
    for call, message in _overlap_cases(device):
        with pytest.raises(RuntimeError, match=message):
            call()


@pytest.mark.parametrize("device", DEVICES)
def test_q_k_v_as_views_of_one_fused_projection_are_accepted(device):
    """The model's layout: q, k, v slice one qkv buffer (disjoint, one allocation); batch 1 x 1 token makes each a
    dense block of it."""
    needs_cuda_kernels(device)
    for batch, tokens in ((1, 1), (2, 3)):
        qkv = torch.randn(batch, tokens, 8 * 8, device=device)
        q, k, v = qkv[..., :32].view(batch, tokens, 4, 8), qkv[..., 32:48].view(batch, tokens, 2, 8), \
            qkv[..., 48:].view(batch, tokens, 2, 8)
        kc, vc = torch.zeros(batch, 2, 5, 8, device=device), torch.zeros(batch, 2, 5, 8, device=device)
        pos = torch.arange(batch * tokens, device=device).view(batch, tokens)
        table = cos_sin_table(16, 8, torch.float32, device)
        ops.rotary_embedding_kv_cache(pos, q, k, v, table, kc, vc, torch.arange(tokens, device=device))
        ops.rotary_embedding(pos, q, k, table)


# ---- index values: refused alike, never wrapped ------------------------------------------------------------------

BOUNDS = [  # (which, value, the value the message names)
    ("positions", -1, r"positions holds -1; expected 0 <= position < 16 \(the rows of cos_sin_cache\)"),
    ("positions", 16, r"positions holds 16; expected 0 <= position < 16 \(the rows of cos_sin_cache\)"),
    ("slots", -1, r"slots holds -1; expected 0 <= slot < 6 \(the capacity of key_cache\)"),
    ("slots", 6, r"slots holds 6; expected 0 <= slot < 6 \(the capacity of key_cache\)"),
]


def _bad_kv_args(device, which, value, index_dtype):
    pos, q, k, v, table, kc, vc, slots = _kv_args(device)
    if which == "positions":
        pos = pos.clone()
        pos[1, 2] = value
    else:
        slots = slots.clone()
        slots[1] = value
    return pos.to(index_dtype), q, k, v, table, kc, vc, slots.to(index_dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("which, value, message", BOUNDS)
def test_an_index_out_of_range_is_refused_by_every_implementation_with_one_message(which, value, message, device,
                                                                                  index_dtype):
    """The public op (checked before launch on CUDA), the reference itself, and on the CPU the op without its
    wrapper: the same RuntimeError, and nothing written."""
    needs_cuda_kernels(device)
    calls = {"hopscotch_ext.rotary_embedding_kv_cache": hopscotch_ext.rotary_embedding_kv_cache,
             "reference": R.rotary_embedding_kv_cache_ref}
    if device == "cpu":  # on CUDA the op without its wrapper asserts on the device (ARCHITECTURE.md §2.10)
        calls["torch.ops"] = ops.rotary_embedding_kv_cache
    for name, fn in calls.items():
        args = _bad_kv_args(device, which, value, index_dtype)
        before = [a.clone() for a in args]
        with pytest.raises(RuntimeError, match="rotary_embedding_kv_cache: " + message):
            fn(*args)
        for a, b in zip(args, before):
            assert torch.equal(a, b), f"{name} wrote before refusing"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("position", [-1, 16])
def test_rotary_positions_out_of_range_are_refused_not_wrapped(position, device):
    needs_cuda_kernels(device)
    table = cos_sin_table(16, 8, torch.float32, device)
    pos = torch.tensor([0, position, 3], device=device)
    expect = rf"positions holds {position}; expected 0 <= position < 16"
    x = torch.randn(3, 2, 8, device=device)
    for op, call in (("rotary_embedding", lambda: hopscotch_ext.rotary_embedding(pos, x, None, table)),
                     ("rotary_embedding_out", lambda: hopscotch_ext.rotary_embedding_out(pos, x, table)),
                     ("rotary_embedding", lambda: R.rotary_embedding_ref(pos, x, None, table)),
                     ("rotary_embedding_out", lambda: R.rotary_embedding_out_ref(pos, x, table, True))):
        with pytest.raises(RuntimeError, match=f"{op}: {expect}"):
            call()
    if device == "cpu":
        with pytest.raises(RuntimeError, match=f"rotary_embedding: {expect}"):
            ops.rotary_embedding(pos, x, None, table)


# ---- the cases a kernel takes another branch for -------------------------------------------------------------


def _layouts(device, dtype, batch=2, tokens=3, qh=4, kh=2, hs=16, cap=9):
    """(label, key_cache, value_cache) laid out as the kernels' other branches read them: contiguous; offset by one
    element (not 16-byte aligned: the scalar path); slots not contiguous (a wider capacity sliced); heads and slots
    transposed (any strides with unit-stride features)."""
    def base():
        return torch.randn(batch, kh, cap, hs, dtype=dtype, device=device)

    flat = torch.randn(2 * batch * kh * cap * hs + 1, dtype=dtype, device=device)
    off = [flat[1 + i * batch * kh * cap * hs: 1 + (i + 1) * batch * kh * cap * hs].view(batch, kh, cap, hs)
           for i in range(2)]
    wide = [torch.randn(batch, kh, cap + 4, hs, dtype=dtype, device=device)[:, :, 2:2 + cap] for _ in range(2)]
    trans = [torch.randn(batch, cap, kh, hs, dtype=dtype, device=device).transpose(1, 2) for _ in range(2)]
    return [("contiguous", base(), base()), ("unaligned", *off), ("sliced capacity", *wide),
            ("transposed", *trans)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_rotary_kv_cache_every_layout_and_index_dtype_gives_the_reference_bits(dtype, index_dtype, device):
    """int32 positions / slots (the CUDA kernel reads them as they are), float64, caches unaligned or not
    contiguous: the same bits as the reference, and nothing outside the written slots changes."""
    needs_cuda_kernels(device)
    g = torch.Generator().manual_seed(int(dtype.itemsize) * 10 + index_dtype.itemsize)
    batch, tokens, qh, kh, hs = 2, 3, 4, 2, 16
    table = cos_sin_table(40, hs, torch.float32, device)
    pos = torch.randint(0, 40, (batch, tokens), generator=g).to(device)
    slots = torch.tensor([5, 1, 7], device=device)
    for label, kc, vc in _layouts(device, dtype):
        assert kc.stride(-1) == 1
        q, k, v = (torch.randn(batch, tokens, h, hs, generator=g).to(dtype).to(device) for h in (qh, kh, kh))
        expect = [t.clone() for t in (q, kc, vc)]
        R.rotary_embedding_kv_cache_ref(pos, *[expect[0], k, v, table, expect[1], expect[2]], slots)
        hopscotch_ext.rotary_embedding_kv_cache(pos.to(index_dtype), q, k, v, table, kc, vc, slots.to(index_dtype))
        for got, want, what in zip((q, kc, vc), expect, ("query", "key_cache", "value_cache")):
            torch.testing.assert_close(got, want, rtol=0, atol=0, msg=lambda m: f"{label} {what}: {m}")
