"""The functions the model code calls: each picks in-place vs out-of-place and grad vs no-grad itself.

Inference (``torch.is_grad_enabled()`` false, or no input requires grad) takes the in-place ops, which write
into buffers the caller hands over; training takes the out-of-place ops, which autograd differentiates. Which
implementation runs (compiled kernel or pure-torch reference) is decided once, by the registration in
``torch.ops.hopscotch_ext`` (see ``hopscotch_ext.info()``); nothing here branches on it.
"""

from __future__ import annotations

import torch

from . import ops

_OPS = torch.ops.hopscotch_ext  # the ops without the wrappers' index check (see rotate_qk)

__all__ = ["add_rms_norm", "rms_norm", "rotate_qk", "silu_and_mul", "silu_gate_up"]


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def add_rms_norm(delta: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, b: torch.Tensor,
                 s: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``new_residual = s * residual + b * delta``; returns ``(rms_norm(new_residual) * weight, new_residual)``.

    Without gradients the result is written in place and ``(delta, residual)`` is returned: ``delta``'s buffer
    holds the normalised output and ``residual``'s the new residual (both inputs are consumed). With gradients
    the inputs are left untouched and two new tensors come back. ``b``, ``s``: 0-d float32 tensors.
    """
    if _needs_grad(delta, residual, weight, b, s):
        return ops.scaled_add_rms_norm(delta, residual, weight, b, s, eps)
    ops.scaled_add_rms_norm_(delta, residual, weight, b, s, eps)
    return delta, residual


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension (out of place, differentiable)."""
    return ops.rms_norm(x, weight, eps)


def rotate_qk(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
              cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding of ``q`` [B, T, Hq, D] and ``k`` [B, T, Hkv, D] at ``positions`` [B, T].

    ``positions`` are row indices into ``cos_sin_cache`` [rows, rot_dim] = [cos | sin], in range by the caller's
    construction (the model's per-token table): they are not read on the host, so on CUDA nothing syncs, and an
    index out of range is refused by the CPU kernel and the reference, asserted by the CUDA kernel
    (``hopscotch_ext.rotary_embedding`` checks them before launch). Without gradients
    ``q`` and ``k`` (views, e.g. slices of a fused qkv output) are rotated in place and returned; with gradients
    rotated copies come back (differentiable w.r.t. q and k; the table is treated as a constant).
    """
    if _needs_grad(q, k):
        return _OPS.rotary_embedding_out(positions, q, cos_sin_cache), _OPS.rotary_embedding_out(
            positions, k, cos_sin_cache)
    _OPS.rotary_embedding(positions, q, k, cos_sin_cache)
    return q, k


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for ``gate_up = [gate | up]`` along the last dimension (differentiable)."""
    return ops.silu_and_mul(gate_up)


def silu_gate_up(x: torch.Tensor, gate_up_weight: torch.Tensor,
                 gate_up_bias: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(x @ Wg^T + bg) * (x @ Wu^T + bu)`` for ``gate_up_weight = [Wg ; Wu]`` [2 * I, hidden].

    One fused kernel at decode sizes; the library GEMM plus the fused activation above them. Differentiable
    w.r.t. ``x``, the weight and the bias.
    """
    return ops.silu_gate_up(x, gate_up_weight, gate_up_bias)
