"""Backward formulas of the hopscotch_ext ops, registered by ``ops.py`` for whichever implementation serves.

Float32 accumulation (float64 stays float64, for gradcheck). The rounding of an output to the model dtype is
treated as the identity (straight-through).
"""

from __future__ import annotations

import torch


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


def rms_norm_setup(ctx, inputs, output):
    x, weight, eps = inputs
    ctx.save_for_backward(x, weight)
    ctx.eps = eps


def rms_norm_backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    dr, dweight = _rms_norm_backward(grad_out, x, weight, ctx.eps)
    return dr.to(x.dtype), dweight if ctx.needs_input_grad[1] else None, None


def scaled_add_rms_norm_setup(ctx, inputs, output):
    x, residual, weight, b, s, eps = inputs
    _, new_residual = output
    ctx.save_for_backward(x, residual, weight, b, s, new_residual)
    ctx.eps = eps


def scaled_add_rms_norm_backward(ctx, grad_normed, grad_residual):
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


def _silu_mul_grads(grad_out: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """d/d[gate | up] of silu(gate) * up (gate, up in the compute dtype)."""
    g = grad_out.to(gate.dtype)
    sig = torch.sigmoid(gate)
    dgate = g * up * sig * (1 + gate * (1 - sig))
    dup = g * gate * sig
    return torch.cat([dgate, dup], dim=-1)


def silu_and_mul_setup(ctx, inputs, output):
    (gate_up,) = inputs
    ctx.save_for_backward(gate_up)


def silu_and_mul_backward(ctx, grad_out):
    (gate_up,) = ctx.saved_tensors
    gu = gate_up.to(_cdt(gate_up))
    d = gu.shape[-1] // 2
    return _silu_mul_grads(grad_out, gu[..., :d], gu[..., d:]).to(gate_up.dtype)


def silu_gate_up_setup(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight, bias)


def silu_gate_up_backward(ctx, grad_out):
    """Recomputes the gate / up projections in the compute dtype (the forward keeps nothing of size 2 * inter)."""
    x, weight, bias = ctx.saved_tensors
    cdt = _cdt(x)
    xf, wf = x.to(cdt), weight.to(cdt)
    gu = torch.nn.functional.linear(xf, wf, None if bias is None else bias.to(cdt))
    inter = weight.shape[0] // 2
    dgu = _silu_mul_grads(grad_out, gu[..., :inter], gu[..., inter:])
    need = ctx.needs_input_grad
    dx = (dgu @ wf).to(x.dtype) if need[0] else None
    dgu2 = dgu.reshape(-1, 2 * inter)
    dw = (dgu2.t() @ xf.reshape(-1, x.shape[-1])).to(weight.dtype) if need[1] else None
    db = dgu2.sum(0).to(bias.dtype) if bias is not None and need[2] else None
    return dx, dw, db


def rotary_out_setup(ctx, inputs, output):
    positions, x, cos_sin_cache, inverse = inputs
    ctx.save_for_backward(positions, cos_sin_cache)
    ctx.inverse = inverse


def rotary_out_backward(ctx, grad_out):
    """A rotation's transpose is the opposite rotation: the same op with ``inverse`` flipped (so the compiled
    kernel serves the backward too, and the backward is itself differentiable)."""
    positions, cos_sin_cache = ctx.saved_tensors
    if ctx.needs_input_grad[2]:
        raise RuntimeError("rotary_embedding_out: no gradient w.r.t. cos_sin_cache (a constant table); "
                           "detach it, or use hopscotch_ext.reference.apply_rotary_ref to learn it")
    grad_x = torch.ops.hopscotch_ext.rotary_embedding_out(positions, grad_out, cos_sin_cache, not ctx.inverse)
    return None, grad_x, None, None
