"""Pure-torch references of every hopscotch_ext op.

They are the test oracle (docs/ARCHITECTURE.md §2.3) and the fallback when the compiled extension is not
available. Each computes in float32 and rounds once to the input dtype, which is what the kernels do, so
that a kernel and its reference differ only by the order of float32 operations.
"""

from __future__ import annotations

import torch

from ._checks import check_indices

__all__ = [
    "rms_norm_ref",
    "scaled_add_rms_norm_ref",
    "scaled_add_rms_norm_inplace_ref",
    "silu_and_mul_ref",
    "silu_gate_up_ref",
    "rotary_embedding_ref",
    "rotary_embedding_out_ref",
    "rotary_embedding_kv_cache_ref",
    "apply_rotary_ref",
]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # float64 inputs stay float64 (gradcheck, float64 oracles); everything else accumulates in float32.
    return torch.float64 if dtype == torch.float64 else torch.float32


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x**2, -1) + eps) * weight`` over the last dimension."""
    cdt = _compute_dtype(x.dtype)
    xf = x.to(cdt)
    rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * rstd * weight.to(cdt)).to(x.dtype)


def scaled_add_rms_norm_ref(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, b: torch.Tensor,
                            s: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``new_residual = s * residual + b * x`` and ``normed = rms_norm(new_residual) * weight``.

    The sum is rounded to the input dtype before it is normalised, exactly as an unfused model does
    (HF adds the residual in the model dtype, then normalises the stored result), so a patched model
    with ``b = s = 1`` reproduces the original.
    """
    cdt = _compute_dtype(x.dtype)
    new_residual = (s.to(cdt) * residual.to(cdt) + b.to(cdt) * x.to(cdt)).to(x.dtype)
    return rms_norm_ref(new_residual, weight, eps), new_residual


def scaled_add_rms_norm_inplace_ref(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, b: torch.Tensor,
                                    s: torch.Tensor, eps: float) -> None:
    """In-place form: ``residual`` receives the new residual and ``x`` the normalised output."""
    normed, new_residual = scaled_add_rms_norm_ref(x, residual, weight, b, s, eps)
    residual.copy_(new_residual)
    x.copy_(normed)


def silu_and_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` where ``gate_up = [gate | up]`` along the last dimension."""
    d = gate_up.shape[-1] // 2
    cdt = _compute_dtype(gate_up.dtype)
    gate = gate_up[..., :d].to(cdt)
    up = gate_up[..., d:].to(cdt)
    return (torch.nn.functional.silu(gate) * up).to(gate_up.dtype)


def silu_gate_up_ref(x: torch.Tensor, gate_up_weight: torch.Tensor,
                     gate_up_bias: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(x @ W_gate^T + b_gate) * (x @ W_up^T + b_up)`` for ``gate_up_weight = [W_gate ; W_up]``: the unfused
    composition (``F.linear`` in the input dtype, then ``silu_and_mul``), as an HF model computes it."""
    # x.contiguous(): the CPU bfloat16 GEMM reads past the end of strided rows (see csrc/ops.h, silu_gate_up_host).
    return silu_and_mul_ref(torch.nn.functional.linear(x.contiguous(), gate_up_weight, gate_up_bias))


def apply_rotary_ref(x: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor,
                     op: str = "rotary_embedding") -> torch.Tensor:
    """Out-of-place half rotation (the Llama / NeoX layout) of ``x`` [*positions.shape, heads, head_size].

    ``cos_sin_cache`` is [max_position, rot_dim]: cos in the first half of the last dimension, sin in the
    second. The first ``rot_dim`` features of each head are rotated; the rest pass through. A position outside
    ``[0, max_position)`` is refused as the kernels refuse it (``op`` names the op in the message), not wrapped.
    """
    check_indices(positions, cos_sin_cache.shape[0], op, "positions", "position", "the rows of cos_sin_cache")
    rot_dim = cos_sin_cache.shape[-1]
    half = rot_dim // 2
    cdt = _compute_dtype(x.dtype)
    cs = cos_sin_cache.to(cdt)[positions.long()]  # [*positions.shape, rot_dim]
    cos = cs[..., :half].unsqueeze(-2)  # broadcast over heads
    sin = cs[..., half:].unsqueeze(-2)
    xf = x.to(cdt)
    x1 = xf[..., :half]
    x2 = xf[..., half:rot_dim]
    rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, xf[..., rot_dim:]], dim=-1)
    return rotated.to(x.dtype)


def rotary_embedding_out_ref(positions: torch.Tensor, x: torch.Tensor, cos_sin_cache: torch.Tensor,
                             inverse: bool = False) -> torch.Tensor:
    """Out of place; ``inverse`` rotates by the opposite angle (sin negated), the backward of the rotation."""
    if inverse:
        half = cos_sin_cache.shape[-1] // 2
        cos_sin_cache = torch.cat([cos_sin_cache[..., :half], -cos_sin_cache[..., half:]], dim=-1)
    return apply_rotary_ref(x, positions, cos_sin_cache, "rotary_embedding_out")


def rotary_embedding_ref(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor | None,
                         cos_sin_cache: torch.Tensor) -> None:
    """In place: rotate ``query`` [*P, q_heads, head_size] and ``key`` [*P, kv_heads, head_size] (optional)."""
    query.copy_(apply_rotary_ref(query, positions, cos_sin_cache))
    if key is not None:
        key.copy_(apply_rotary_ref(key, positions, cos_sin_cache))


def rotary_embedding_kv_cache_ref(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                  cos_sin_cache: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                                  slots: torch.Tensor) -> None:
    """In place: ``query`` [B, T, Hq, D] rotated; ``key_cache[b, h, slots[t]]`` = rotated ``key[b, t, h]`` and
    ``value_cache[b, h, slots[t]]`` = ``value[b, t, h]`` (caches [B, Hkv, capacity, D])."""
    op = "rotary_embedding_kv_cache"
    check_indices(slots, key_cache.shape[2], op, "slots", "slot", "the capacity of key_cache")
    query.copy_(apply_rotary_ref(query, positions, cos_sin_cache, op))
    idx = slots.long()
    key_cache[:, :, idx] = apply_rotary_ref(key, positions, cos_sin_cache, op).transpose(1, 2)
    value_cache[:, :, idx] = value.transpose(1, 2)
