"""Concatenated projections (q|k|v and gate|up) that cost no extra memory.

The weights of the projections are copied once into one ``[sum(out), in]`` tensor and each module's ``weight``
(and ``bias``) becomes a view into it, so the model holds each weight once and one matmul serves several
projections. Anything that rebinds a weight afterwards (``model.to(...)``, loading a state dict into a fresh
tensor) breaks the sharing; ``FusedLinear.intact`` notices, and the patcher fuses again.

Only plain ``nn.Linear`` modules whose weights are plain floating-point tensors, with the same dtype, device and
bias layout, are fused. Quantized projections are used as they are, through their own modules (the caller falls
back to calling each one): a bitsandbytes / GPTQ layer is not an ``nn.Linear``, and a torchao-quantized one is an
``nn.Linear`` whose weight is a tensor subclass (concatenating it would fail, or dequantize it into a
full-precision copy). LoRA-wrapped projections are not ``nn.Linear`` either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FusedLinear", "can_fuse", "is_plain_weight"]


def is_plain_weight(t: torch.Tensor | None) -> bool:
    """True for a floating-point tensor or parameter of torch's own class (no quantized tensor subclass, no
    torch quantized dtype)."""
    return (t is None or (type(t) in (torch.Tensor, nn.Parameter) and type(t.data) is torch.Tensor
                          and t.is_floating_point() and not t.is_quantized))


def can_fuse(modules: list[nn.Module]) -> bool:
    """True when every module is a plain nn.Linear with plain floating-point weights (``is_plain_weight``) on one
    device and dtype, with biases on all or none."""
    if not modules or any(type(m) is not nn.Linear or not (is_plain_weight(m.weight) and is_plain_weight(m.bias))
                          for m in modules):
        return False
    w0 = modules[0].weight
    if any(m.weight.device.type == "meta" or hasattr(m, "_hf_hook") for m in modules):
        return False  # offloaded by accelerate (patch/offload.py): called one by one, each through its hook
    has_bias = [m.bias is not None for m in modules]
    if any(has_bias) and not all(has_bias):
        return False
    return all(m.weight.dtype == w0.dtype and m.weight.device == w0.device and m.in_features == modules[0].in_features
               for m in modules)


class FusedLinear:
    """One linear map whose output is the concatenation of several ``nn.Linear`` outputs (not an nn.Module:
    it owns no parameters of its own, only the storage the modules' parameters view)."""

    def __init__(self, modules: list[nn.Linear]):
        self.modules = list(modules)
        self.splits = [m.out_features for m in modules]
        with torch.no_grad():
            self.weight = torch.cat([m.weight.detach() for m in modules], dim=0)
            self.bias = torch.cat([m.bias.detach() for m in modules]) if modules[0].bias is not None else None
            self._rebind()
        # Not parameters of any module, so a compiled step would take them as graph inputs, and a CUDA graph would
        # copy them into its own buffers at every replay: their address is fixed, say so.
        for t in (self.weight, self.bias):
            if t is not None:
                torch._dynamo.mark_static_address(t)

    def _rebind(self) -> None:
        start = 0
        for m, n in zip(self.modules, self.splits):
            m.weight = nn.Parameter(self.weight[start:start + n], requires_grad=m.weight.requires_grad)
            if self.bias is not None:
                m.bias = nn.Parameter(self.bias[start:start + n], requires_grad=m.bias.requires_grad)
            start += n

    def intact(self) -> bool:
        """True while every module's parameters still view this object's storage (nothing rebound them)."""
        start = 0
        es = self.weight.element_size()
        base = self.weight.data_ptr()
        row = self.weight.shape[1] * es
        for m, n in zip(self.modules, self.splits):
            if m.weight.data_ptr() != base + start * row or m.weight.device != self.weight.device:
                return False
            if self.bias is not None and m.bias.data_ptr() != self.bias.data_ptr() + start * es:
                return False
            start += n
        return True

    def trainable(self) -> bool:
        """True when some projection weight wants a gradient: then the modules must be called one by one."""
        return any(m.weight.requires_grad or (m.bias is not None and m.bias.requires_grad) for m in self.modules)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def unfuse(self) -> None:
        """Give every module its own copy of its weights again (so nothing shares storage after unpatching)."""
        with torch.no_grad():
            for m in self.modules:
                m.weight = nn.Parameter(m.weight.detach().clone(), requires_grad=m.weight.requires_grad)
                if m.bias is not None:
                    m.bias = nn.Parameter(m.bias.detach().clone(), requires_grad=m.bias.requires_grad)
