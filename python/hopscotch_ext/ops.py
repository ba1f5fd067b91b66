"""The hopscotch_ext ops as typed Python functions.

Each calls ``torch.ops.hopscotch_ext.<op>`` when the compiled extension is loaded and its pure-torch
reference otherwise. Fake (meta) kernels let ``torch.compile`` trace the ops; autograd formulas make
``rms_norm``, ``scaled_add_rms_norm`` and ``silu_and_mul`` trainable (Hopscotch trains ``b`` and ``s``).
"""

from __future__ import annotations

import torch

from . import EXTENSION_LOADED
from . import reference as ref

__all__ = [
    "rms_norm",
    "scaled_add_rms_norm",
    "scaled_add_rms_norm_",
    "silu_and_mul",
    "rotary_embedding",
    "apply_rotary",
]

_LIB = "hopscotch_ext"


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension: ``x / sqrt(mean(x**2) + eps) * weight``."""
    if EXTENSION_LOADED:
        return torch.ops.hopscotch_ext.rms_norm(x, weight, eps)
    return ref.rms_norm_ref(x, weight, eps)


def scaled_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, b: torch.Tensor, s: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``new_residual = s * residual + b * x``; returns ``(rms_norm(new_residual) * weight, new_residual)``."""
    if EXTENSION_LOADED:
        return torch.ops.hopscotch_ext.scaled_add_rms_norm(x, residual, weight, b, s, eps)
    return ref.scaled_add_rms_norm_ref(x, residual, weight, b, s, eps)


def scaled_add_rms_norm_(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, b: torch.Tensor, s: torch.Tensor, eps: float
) -> None:
    """In-place inference form: ``residual`` becomes the new residual, ``x`` the normalised output."""
    if EXTENSION_LOADED:
        torch.ops.hopscotch_ext.scaled_add_rms_norm_(x, residual, weight, b, s, eps)
    else:
        ref.scaled_add_rms_norm_inplace_ref(x, residual, weight, b, s, eps)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for ``gate_up = [gate | up]`` along the last dimension."""
    if EXTENSION_LOADED:
        return torch.ops.hopscotch_ext.silu_and_mul(gate_up)
    return ref.silu_and_mul_ref(gate_up)


def rotary_embedding(
    positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor | None, cos_sin_cache: torch.Tensor
) -> None:
    """In-place half rotation of ``query`` [*P, heads, head_size] and ``key`` at ``positions`` [*P]."""
    if EXTENSION_LOADED:
        torch.ops.hopscotch_ext.rotary_embedding(positions, query, key, cos_sin_cache)
    else:
        query.copy_(ref.apply_rotary_ref(query, positions, cos_sin_cache))
        if key is not None:
            key.copy_(ref.apply_rotary_ref(key, positions, cos_sin_cache))


def rotary_embedding_out(positions: torch.Tensor, x: torch.Tensor, cos_sin_cache: torch.Tensor,
                         inverse: bool = False) -> torch.Tensor:
    """Out-of-place rotary of ``x`` [*P, heads, head_size] (interim: the differentiable reference)."""
    if inverse:
        half = cos_sin_cache.shape[-1] // 2
        cos_sin_cache = torch.cat([cos_sin_cache[..., :half], -cos_sin_cache[..., half:]], dim=-1)
    return ref.apply_rotary_ref(x, positions, cos_sin_cache)


def silu_gate_up(x: torch.Tensor, gate_up_weight: torch.Tensor,
                 gate_up_bias: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(x @ Wg^T + bg) * (x @ Wu^T + bu)`` (interim: linear + silu_and_mul)."""
    return silu_and_mul(torch.nn.functional.linear(x, gate_up_weight, gate_up_bias))


def apply_rotary(x: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor) -> torch.Tensor:
    """Out-of-place rotary: the kernel on a copy when no gradient is needed, the reference when one is."""
    if torch.is_grad_enabled() and (x.requires_grad or cos_sin_cache.requires_grad):
        return ref.apply_rotary_ref(x, positions, cos_sin_cache)
    out = x.clone(memory_format=torch.contiguous_format)
    rotary_embedding(positions, out, None, cos_sin_cache)
    return out


# ---------------------------------------------------------------------------------------------------------
# Backward formulas (float32 accumulation; float64 stays float64 for gradcheck).
# The rounding of new_residual to the model dtype is treated as the identity (straight-through).


def _cdt(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _rms_norm_backward(grad_out: torch.Tensor, r: torch.Tensor, weight: torch.Tensor, eps: float):
    """Returns (d loss / d r, d loss / d weight) for y = r * rstd(r) * weight."""
    cdt = _cdt(r)
    rf = r.to(cdt)
    rstd = torch.rsqrt(rf.pow(2).mean(-1, keepdim=True) + eps)
    g = grad_out.to(cdt)
    gw = g * weight.to(cdt)
    dr = rstd * gw - rf * rstd.pow(3) * (gw * rf).mean(-1, keepdim=True)
    dweight = (g * rf * rstd).reshape(-1, r.shape[-1]).sum(0).to(weight.dtype)
    return dr, dweight


def _rms_norm_setup(ctx, inputs, output):
    x, weight, eps = inputs
    ctx.save_for_backward(x, weight)
    ctx.eps = eps


def _rms_norm_bwd(ctx, grad_out):
    x, weight = ctx.saved_tensors
    dr, dweight = _rms_norm_backward(grad_out, x, weight, ctx.eps)
    return dr.to(x.dtype), dweight if ctx.needs_input_grad[1] else None, None


def _sarn_setup(ctx, inputs, output):
    x, residual, weight, b, s, eps = inputs
    _, new_residual = output
    ctx.save_for_backward(x, residual, weight, b, s, new_residual)
    ctx.eps = eps


def _sarn_bwd(ctx, grad_normed, grad_residual):
    x, residual, weight, b, s, r = ctx.saved_tensors
    cdt = _cdt(r)
    if grad_normed is None:
        dr = torch.zeros_like(r, dtype=cdt)
        dweight = torch.zeros_like(weight)
    else:
        dr, dweight = _rms_norm_backward(grad_normed, r, weight, ctx.eps)
    if grad_residual is not None:
        dr = dr + grad_residual.to(cdt)
    need = ctx.needs_input_grad
    gx = (b.to(cdt) * dr).to(x.dtype) if need[0] else None
    gres = (s.to(cdt) * dr).to(residual.dtype) if need[1] else None
    gb = (dr * x.to(cdt)).sum().reshape(b.shape).to(b.dtype) if need[3] else None
    gs = (dr * residual.to(cdt)).sum().reshape(s.shape).to(s.dtype) if need[4] else None
    return gx, gres, dweight if need[2] else None, gb, gs, None


def _silu_setup(ctx, inputs, output):
    (gate_up,) = inputs
    ctx.save_for_backward(gate_up)


def _silu_bwd(ctx, grad_out):
    (gate_up,) = ctx.saved_tensors
    cdt = _cdt(gate_up)
    d = gate_up.shape[-1] // 2
    gate = gate_up[..., :d].to(cdt)
    up = gate_up[..., d:].to(cdt)
    g = grad_out.to(cdt)
    sig = torch.sigmoid(gate)
    dgate = g * up * sig * (1 + gate * (1 - sig))
    dup = g * gate * sig
    return torch.cat([dgate, dup], dim=-1).to(gate_up.dtype)


def _register() -> None:
    """Fake kernels and autograd for the compiled ops (only when they exist in torch.ops)."""

    @torch.library.register_fake(f"{_LIB}::rms_norm")
    def _(x, weight, eps):
        return x.new_empty(x.shape)

    @torch.library.register_fake(f"{_LIB}::scaled_add_rms_norm")
    def _(x, residual, weight, b, s, eps):
        return x.new_empty(x.shape), x.new_empty(x.shape)

    @torch.library.register_fake(f"{_LIB}::scaled_add_rms_norm_")
    def _(x, residual, weight, b, s, eps):
        return None

    @torch.library.register_fake(f"{_LIB}::silu_and_mul")
    def _(gate_up):
        return gate_up.new_empty((*gate_up.shape[:-1], gate_up.shape[-1] // 2))

    @torch.library.register_fake(f"{_LIB}::rotary_embedding")
    def _(positions, query, key, cos_sin_cache):
        return None

    torch.library.register_autograd(f"{_LIB}::rms_norm", _rms_norm_bwd, setup_context=_rms_norm_setup)
    torch.library.register_autograd(f"{_LIB}::scaled_add_rms_norm", _sarn_bwd, setup_context=_sarn_setup)
    torch.library.register_autograd(f"{_LIB}::silu_and_mul", _silu_bwd, setup_context=_silu_setup)


if EXTENSION_LOADED:
    _register()
