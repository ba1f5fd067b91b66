"""Shared pieces of the kernel tests: devices, dtypes, shapes and the accuracy rule of docs/ARCHITECTURE.md §2.3."""

from __future__ import annotations

import pytest
import torch

import hopscotch_ext

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOKENS = [1, 7, 83, 1000]
HIDDEN = [64, 576, 769, 4096, 5125]
# silu_gate_up: tokens on both sides of the fused decode path's limits (CPU 2, CUDA 16), (hidden, intermediate)
# pairs of odd sizes (a partial vector chunk in every row) and a real model's (SmolLM2: 576 -> 1536).
MLP_TOKENS = [1, 2, 3, 7, 16, 17, 83]
MLP_SHAPES = [(64, 96), (576, 1536), (769, 5125)]
EPS = 1e-6

_NO_GPU = "no CUDA GPU on this machine (the CUDA kernels are compiled, not run, here)"
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=_NO_GPU)]),
]

needs_extension = pytest.mark.skipif(
    not hopscotch_ext.info()["loaded"], reason=f"compiled extension not loaded: {hopscotch_ext.info()['load_error']}"
)


def cos_sin_table(max_pos: int, rot_dim: int, dtype: torch.dtype, device, base: float = 10000.0) -> torch.Tensor:
    """A rotary table [max_pos, rot_dim] = [cos | sin], as a Llama computes it."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rot_dim, 2, dtype=torch.float64) / rot_dim))
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float64), inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(dtype).to(device)


def opcheck_cases(device: str) -> list[tuple]:
    """(op overload, args) for every op of torch.ops.hopscotch_ext, small and odd-sized: what opcheck runs, with the
    compiled kernels and with the reference fallback alike."""
    g = torch.Generator().manual_seed(11)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device)

    x, res, w = rnd(7, 83), rnd(7, 83), torch.rand(83, generator=g).to(device)
    b = torch.tensor(0.5, device=device)
    cache = rnd(32, 16)
    pos = torch.randint(0, 32, (7,), generator=g).to(device)
    gu_w, gu_b = rnd(2 * 19, 83) * 0.1, rnd(2 * 19)
    ops = torch.ops.hopscotch_ext
    return [
        (ops.rms_norm.default, (x, w, EPS)),
        (ops.scaled_add_rms_norm.default, (x, res, w, b, b, EPS)),
        (ops.scaled_add_rms_norm_.default, (x.clone(), res.clone(), w, b, b, EPS)),
        (ops.silu_and_mul.default, (rnd(7, 2 * 83),)),
        (ops.silu_gate_up.default, (x[:2], gu_w, gu_b)),  # fused decode path (CPU and CUDA)
        (ops.silu_gate_up.default, (x, gu_w, gu_b)),  # 7 tokens: fused on CUDA, GEMM + silu_and_mul on the CPU
        (ops.silu_gate_up.default, (rnd(3, 9, 83), gu_w, None)),  # 27 tokens: GEMM + silu_and_mul
        (ops.rotary_embedding.default, (pos, rnd(7, 3, 16), rnd(7, 1, 16), cache)),
        (ops.rotary_embedding_out.default, (pos, rnd(7, 3, 16), cache, False)),
        (ops.rotary_embedding_out.default, (pos.view(1, 7), rnd(1, 7, 2, 20), cache, True)),  # partial rotary
        (ops.rotary_embedding_kv_cache.default,  # batch 2, 3 tokens, GQA 3:1, slots 4..6 of 9
         (pos[:6].view(2, 3), rnd(2, 3, 3, 16), rnd(2, 3, 1, 16), rnd(2, 3, 1, 16), cache, rnd(2, 1, 9, 16),
          rnd(2, 1, 9, 16), torch.arange(4, 7, device=device))),
        (ops.rotary_embedding.default, (pos.int(), rnd(7, 3, 16).double(), None, cache.double())),  # int32, fp64
        (ops.rotary_embedding_kv_cache.default,  # int32 positions and slots, float64, a float32 table
         (pos[:6].view(2, 3).int(), rnd(2, 3, 3, 16).double(), rnd(2, 3, 1, 16).double(), rnd(2, 3, 1, 16).double(),
          cache, rnd(2, 1, 9, 16).double(), rnd(2, 1, 9, 16).double(), torch.arange(4, 7, device=device).int())),
    ]


# assert_close keywords for "same bits whatever the layout": a property of the kernels (one code path per row);
# the reference fallback's torch ops may sum a strided or transposed input in another order.
SAME_BITS: dict = {"rtol": 0, "atol": 0} if hopscotch_ext.info()["loaded"] else {}


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


def assert_same_bits(out: torch.Tensor, ref_same_dtype: torch.Tensor) -> None:
    """The rotary kernels round exactly as their reference: each float32 (float64) product rounded, then the sum,
    then once to the dtype; no FMA on either side (the CPU sources are compiled with -ffp-contract=off, the CUDA
    kernels use __fmul_rn / __fsub_rn). So the contract there is the reference's bits, not invariant 3's bound."""
    assert out.shape == ref_same_dtype.shape and out.dtype == ref_same_dtype.dtype
    torch.testing.assert_close(out, ref_same_dtype, rtol=0, atol=0, equal_nan=True)


def strided(t: torch.Tensor, pad: int = 3) -> torch.Tensor:
    """A non-contiguous view with the same values: a column slice of a wider buffer."""
    wide = torch.empty(*t.shape[:-1], t.shape[-1] + pad, dtype=t.dtype, device=t.device)
    wide[..., : t.shape[-1]] = t
    view = wide[..., : t.shape[-1]]
    assert not view.is_contiguous() or t.numel() == 0 or t.shape[-1] == 0
    return view


def gradient_probe() -> dict[str, torch.Tensor]:
    """Outputs and float32 gradients of every differentiable op through hopscotch_ext.functional, from fixed
    inputs: computed with the compiled kernels and with the reference fallback, they must agree."""
    import hopscotch_ext.functional as F

    g = torch.Generator().manual_seed(21)

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).requires_grad_()

    out: dict[str, torch.Tensor] = {}

    def record(name, result, inputs):
        results = result if isinstance(result, tuple) else (result,)
        loss = sum((r * torch.randn(r.shape, generator=g)).sum() for r in results)
        grads = torch.autograd.grad(loss, inputs)
        for i, r in enumerate(results):
            out[f"{name}.out{i}"] = r.detach()
        for i, gr in enumerate(grads):
            out[f"{name}.grad{i}"] = gr

    delta, res, w = leaf(2, 5, 83), leaf(2, 5, 83), leaf(83, scale=0.3)
    b, s = torch.tensor(0.8, requires_grad=True), torch.tensor(1.2, requires_grad=True)
    record("add_rms_norm", F.add_rms_norm(delta, res, w, b, s, EPS), (delta, res, w, b, s))
    x = leaf(7, 83)
    record("rms_norm", F.rms_norm(x, w, EPS), (x, w))
    qkv = leaf(2, 5, 6 * 16)
    q, k = qkv[..., :64].view(2, 5, 4, 16), qkv[..., 64:80].view(2, 5, 1, 16)
    cache = torch.randn(10, 16, generator=g)
    record("rotate_qk", F.rotate_qk(q, k, torch.arange(10).view(2, 5), cache), (qkv,))
    gu = leaf(7, 2 * 19)
    record("silu_and_mul", F.silu_and_mul(gu), (gu,))
    for tokens in (3, 20):
        xm, wm, bm = leaf(tokens, 83), leaf(2 * 19, 83, scale=0.1), leaf(2 * 19)
        record(f"silu_gate_up{tokens}", F.silu_gate_up(xm, wm, bm), (xm, wm, bm))
    return out
