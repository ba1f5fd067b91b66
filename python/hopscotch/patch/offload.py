"""Models dispatched by accelerate with weights offloaded (``device_map`` with ``max_memory`` / ``offload_folder``).

accelerate keeps an offloaded module's weights on the meta device and puts a hook on the module that loads them
(from CPU memory or a disk folder) onto its execution device just before its ``forward`` and drops them after. The
patched layers call the projections as modules, so those hooks do their work; only what the patched code reads
directly needs help: the RMSNorm weights (``Stream.norm``: every layer's two norms, Qwen3's q/k norms, the final
norm), which ``onloaded`` loads for the span of a layer (``OffloadedLayerHooks``) or of the final norm, and the
devices of the scalars and the KV cache, which ``execution_device`` gives. Offloaded projections are never fused
(``fuse.can_fuse``): they are called one by one, each through its hook, so no offloaded weight is ever copied into
a fused tensor.

Training the scalars (the search) backpropagates through every layer, and autograd keeps the weights a forward
used (``y = x W^T`` needs W for the input's gradient), so by the end of a forward every offloaded weight would be
held in memory at once. ``saved_weights_reloaded`` stops that: while it is on, an offloaded weight that autograd
saves is kept as a note of where it lives (the hook's ``weights_map``), and the backward reads it again from there
(``track_loads`` notes which tensors are loaded offloaded weights, between each hook's load and drop).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

__all__ = ["is_offloaded", "execution_device", "onloaded", "OffloadedLayerHooks", "offloaded_modules", "track_loads",
           "saved_weights_reloaded"]


def _hooks(module: nn.Module) -> list:
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", None) or [hook])  # a SequentialHook holds several


def is_offloaded(module: nn.Module) -> bool:
    """True when accelerate offloaded ``module``'s own weights (they are on the meta device; its hook loads them)."""
    return any(getattr(h, "offload", False) for h in _hooks(module)) and \
        any(t.device.type == "meta" for t in module.parameters(recurse=False))


def execution_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: its first real parameter's device, else its (or a submodule's) accelerate hook's
    execution device, else the CPU."""
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    for m in module.modules():
        for h in _hooks(m):
            dev = getattr(h, "execution_device", None)
            if dev is not None:
                return torch.device(dev) if not isinstance(dev, int) else torch.device("cuda", dev)
    return torch.device("cpu")


def offloaded_modules(module: nn.Module, names: tuple[str, ...]) -> list[nn.Module]:
    """The modules of ``module`` at these dotted names that exist and are offloaded."""
    out = []
    for name in names:
        m = module
        for part in name.split("."):
            m = getattr(m, part, None)
        if isinstance(m, nn.Module) and is_offloaded(m):
            out.append(m)
    return out


class onloaded:
    """``with onloaded(modules):`` the offloaded ones' weights are on their execution device inside (accelerate's
    own hook loads and drops them); modules that are not offloaded are left alone."""

    def __init__(self, modules: list[nn.Module]):
        self.modules = [m for m in modules if is_offloaded(m)]

    def __enter__(self):
        for m in self.modules:
            for h in _hooks(m):
                h.pre_forward(m)
        return self

    def __exit__(self, *exc):
        for m in self.modules:
            for h in _hooks(m):
                h.post_forward(m, None)
        return False


# What a patched layer reads without calling it as a module (the norms' weights).
DIRECT_READS = ("input_layernorm", "post_attention_layernorm", "self_attn.q_norm", "self_attn.k_norm",
                "pre_feedforward_layernorm", "post_feedforward_layernorm")


class OffloadedLayerHooks:
    """Forward hooks on a patched layer that load the offloaded norms it reads directly for its forward."""

    def __init__(self, layer: nn.Module, modules: list[nn.Module]):
        self.modules = modules
        self._active: onloaded | None = None
        self.handles = [layer.register_forward_pre_hook(self._pre), layer.register_forward_hook(self._post)]

    def _pre(self, layer, args):
        self._active = onloaded(self.modules).__enter__()

    def _post(self, layer, args, output):
        if self._active is not None:
            self._active.__exit__(None, None, None)
            self._active = None

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


# Offloaded weights loaded right now (between their hook's load and drop): data_ptr -> (weights_map, name, device,
# dtype, shape, stride). Only these are replaced by a note when autograd saves them.
_LOADED: dict[int, tuple] = {}


def _module_tensors(hook, module):
    params = module.named_parameters(recurse=bool(getattr(hook, "place_submodules", False)))
    return [(n, p) for n, p in params if p.device.type != "meta"]


def track_loads(module: nn.Module) -> list:
    """Note the weights ``module``'s offloading hook loads while they are loaded; returns what ``untrack`` needs."""
    done = []
    for hook in _hooks(module):
        if not getattr(hook, "offload", False) or "pre_forward" in vars(hook):
            continue
        pre, post = hook.pre_forward, hook.post_forward

        def loading(m, *args, _hook=hook, _pre=pre, **kwargs):
            out = _pre(m, *args, **kwargs)
            for name, p in _module_tensors(_hook, m):
                _LOADED[p.data_ptr()] = (_hook.weights_map, name, p.device, p.dtype, p.shape, p.stride())
            return out

        def dropping(m, output, _hook=hook, _post=post):
            for _, p in _module_tensors(_hook, m):
                _LOADED.pop(p.data_ptr(), None)
            return _post(m, output)

        hook.pre_forward, hook.post_forward = loading, dropping
        done.append(hook)
    return done


def untrack(hooks: list) -> None:
    for hook in hooks:
        del hook.pre_forward, hook.post_forward


def _pack(t: torch.Tensor):
    if t.device.type == "meta" or not t.is_leaf:
        return t
    entry = _LOADED.get(t.data_ptr())
    if entry is None or entry[4] != t.shape or entry[5] != t.stride():
        return t
    return _Note(*entry[:4])


def _unpack(x):
    if isinstance(x, _Note):
        return torch.as_tensor(x.weights_map[x.name]).to(x.device, x.dtype)
    return x


class _Note:
    """Where an offloaded weight autograd saved lives (read again for the backward)."""

    __slots__ = ("weights_map", "name", "device", "dtype")

    def __init__(self, weights_map, name, device, dtype):
        self.weights_map, self.name, self.device, self.dtype = weights_map, name, device, dtype


def saved_weights_reloaded(active: bool):
    """Inside (when ``active``: the model has offloaded weights), autograd saves notes instead of offloaded weights
    and the backward reads them again (see the module docstring)."""
    return torch.autograd.graph.saved_tensors_hooks(_pack, _unpack) if active else contextlib.nullcontext()
