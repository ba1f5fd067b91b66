"""patch_model / unpatch_model: swap a loaded HF model's decoder layers for skip-aware ones, and back.

Patching works per instance on a model that is already loaded (any device, any dtype, dispatched by accelerate
or wrapped by PEFT): each decoder layer is replaced in its ModuleList by a ``HopscotchDecoderLayer`` that shares
the original's submodules (so state-dict keys and weights are unchanged), and the decoder stack's ``forward`` is
overridden on the instance by ``stack.patched_forward``. ``unpatch_model`` puts the original layers and forward
back and gives every fused projection its own weights again.
"""

from __future__ import annotations

import types
from typing import Iterable

import torch
from torch import nn

from ..arch import (UnsupportedModelError, base_model, causal_lm, check_supported, layer_attention_type,
                    layer_sliding_window, norm_layout)
from ..errors import PlanError, as_index_list, check_arg
from ..limits import check_skip_lists
from .fuse import is_plain_weight
from .generation import install_generate_hook, remove_generate_hook
from .layer import SCALAR_NAMES, HopscotchDecoderLayer
from .offload import (DIRECT_READS, OffloadedLayerHooks, execution_device, is_offloaded, offloaded_modules,
                      saved_weights_reloaded, track_loads, untrack)
from .stack import patched_forward

__all__ = ["PatchState", "patch_model", "unpatch_model", "is_patched", "patched_layers", "set_skips",
           "reset_scalars", "get_scalars", "set_scalars", "training_context"]

_SILU = ("silu", "swish")


class PatchState:
    """What a patched decoder stack needs at run time; lives at ``base_model._hopscotch_state``."""

    def __init__(self, model_type: str, config, layers: list[HopscotchDecoderLayer], originals: list[nn.Module],
                 saved_forward):
        self.model_type = model_type
        self.config = config
        self.layers = layers
        self.originals = originals
        self.saved_forward = saved_forward
        self._kept: tuple[int, ...] | None = None
        self.offload_hooks: list[OffloadedLayerHooks] = []  # accelerate-offloaded weights (offload.py)
        self.tracked: list = []  # their hooks, noting loaded weights (offload.track_loads)
        self.offloaded = False

    def kept_attention(self) -> tuple[int, ...]:
        """Original indices of the kept attention blocks (memoised; ``set_skips`` resets it)."""
        if self._kept is None:
            self._kept = tuple(layer.layer_idx for layer in self.layers if not layer.attn_skipped)
        return self._kept

    def cache_blocks(self) -> list[tuple]:
        """What a HopscotchCache allocates per kept attention block: (layer_idx, kv_heads, head_dim,
        sliding_window, dtype, device), the dtype and device of the block's key projection."""
        config = self.config
        blocks = []
        for layer in self.layers:
            if layer.attn_skipped:
                continue
            attn = layer.self_attn
            # The keys' dtype is the activations': a plain key projection's weight dtype, else (a quantized
            # projection, whose weight is int8 / packed or absent) the dtype of the norm in front of the block.
            weight = getattr(attn.k_proj, "weight", None)
            if weight is None or not is_plain_weight(weight):
                weight = layer.input_layernorm.weight
            device = weight.device if weight.device.type != "meta" else execution_device(attn.k_proj)  # offloaded
            blocks.append((layer.layer_idx, config.num_key_value_heads, attn.head_dim, layer.sliding_window,
                           weight.dtype, device))
        return blocks

    def saved_weights_reloaded(self):
        """The context a training step runs in: offloaded weights that autograd saves are read again for the
        backward, not held (``offload.saved_weights_reloaded``)."""
        return saved_weights_reloaded(self.offloaded)

    @torch.compiler.disable
    def ensure_fused(self) -> None:
        for layer in self.layers:
            if layer.fusion_broken():
                layer.fuse_projections()


def is_patched(model: nn.Module) -> bool:
    try:
        return hasattr(base_model(model), "_hopscotch_state")
    except TypeError:
        return False


def _state(model: nn.Module) -> PatchState:
    base = base_model(model)
    state = getattr(base, "_hopscotch_state", None)
    if state is None:
        raise RuntimeError("the model is not patched; call hopscotch.patch_model(model) (or apply_plan) first")
    return state


def training_context(model: nn.Module):
    """What a training step of a patched model runs in: for weights accelerate offloaded, autograd keeps notes of
    them and the backward reads them again (``offload.saved_weights_reloaded``); else nothing."""
    return _state(model).saved_weights_reloaded()


def patched_layers(model: nn.Module) -> list[HopscotchDecoderLayer]:
    """The skip-aware layers of a patched model, in order."""
    return _state(model).layers


def patch_model(model: nn.Module) -> nn.Module:
    """Patch ``model`` in place (and return it). Patching an already patched model does nothing.

    Nothing is skipped and every scalar is 1 afterwards, so the model computes what it computed before
    (docs/ARCHITECTURE.md §2.1); ``apply_plan`` or ``set_skips`` choose what to skip.
    """
    check_arg(isinstance(model, nn.Module), "patch_model", "model", model,
              "a loaded transformers causal LM (a torch.nn.Module)")
    model_type = check_supported(model)
    base = base_model(model)
    if hasattr(base, "_hopscotch_state"):
        return model
    config = base.config
    # Gemma names its activation hidden_activation (tanh GELU: the MLP's own modules, unfused)
    fuse_silu = (getattr(config, "hidden_act", None) or getattr(config, "hidden_activation", "silu")) in _SILU
    norms = norm_layout(model_type)
    originals = list(base.layers)
    layers = [HopscotchDecoderLayer(layer, i, layer_attention_type(config, i), layer_sliding_window(config, i),
                                    fuse_silu, norms) for i, layer in enumerate(originals)]
    saved_forward = base.__dict__.get("forward")  # an instance-level forward (e.g. an accelerate hook), if any
    for i, layer in enumerate(layers):
        base.layers[i] = layer
    state = PatchState(model_type, config, layers, originals, saved_forward)
    _offload_support(state, base, model)
    base._hopscotch_state = state
    base.forward = types.MethodType(patched_forward, base)
    try:
        install_generate_hook(causal_lm(model))
    except UnsupportedModelError:  # the decoder stack alone was patched: no generate() to hook
        pass
    return model


def _offload_support(state: PatchState, base: nn.Module, model: nn.Module) -> None:
    """For weights accelerate offloaded (``offload.py``): the norms a layer reads directly are loaded for its
    forward, the scalars live on the layer's execution device, and loaded weights are noted (for training)."""
    for layer, original in zip(state.layers, state.originals):
        mods = offloaded_modules(original, DIRECT_READS)
        if mods:
            state.offload_hooks.append(OffloadedLayerHooks(layer, mods))
        device = execution_device(original)
        for name in SCALAR_NAMES:
            p = getattr(layer, name)
            if p.device != device:
                setattr(layer, name, nn.Parameter(p.detach().to(device), requires_grad=p.requires_grad))
    offloaded = [m for m in model.modules() if is_offloaded(m)]
    state.offloaded = bool(offloaded)
    state.tracked = [h for m in offloaded for h in track_loads(m)]


def unpatch_model(model: nn.Module) -> nn.Module:
    """Restore the original decoder layers and forward (the scalars and skips are dropped)."""
    base = base_model(model)
    state = getattr(base, "_hopscotch_state", None)
    if state is None:
        return model
    for hooks in state.offload_hooks:
        hooks.remove()
    untrack(state.tracked)
    for i, (layer, original) in enumerate(zip(state.layers, state.originals)):
        layer.unfuse_projections()
        base.layers[i] = original
    if state.saved_forward is not None:
        base.forward = state.saved_forward
    else:
        del base.forward
    del base._hopscotch_state
    try:
        remove_generate_hook(causal_lm(model))
    except UnsupportedModelError:
        pass
    return model


def set_skips(model: nn.Module, attention: Iterable[int] = (), mlp: Iterable[int] = (), *,
              allow_no_attention: bool = False) -> None:
    """Skip exactly these attention and MLP blocks (all others kept); compact cache indices follow.

    The skip sets follow ``hopscotch.limits`` (in range, no duplicates, some attention and some MLP kept);
    ``allow_no_attention=True`` lifts the attention part for benchmarks that time the attention-free floor. A block
    whose weights were released (``apply_plan(free_skipped=True)``, or a hopscotch export that never wrote them)
    stays skipped: keeping one raises ``PlanError``. Nothing changes when it raises."""
    check_arg(isinstance(model, nn.Module) and is_patched(model), "set_skips", "model", model,
              "a patched model (call hopscotch.patch_model(model) or apply_plan first)")
    check_arg(isinstance(allow_no_attention, bool), "set_skips", "allow_no_attention", allow_no_attention,
              "True or False")
    state = _state(model)
    attention, mlp = check_skip_lists(as_index_list(attention, "set_skips", "attention"),
                                      as_index_list(mlp, "set_skips", "mlp"), len(state.layers),
                                      names=("attention", "mlp"), allow_no_attention=allow_no_attention)
    for kind, idx in (("attention", attention), ("mlp", mlp)):
        freed = [lay.layer_idx for lay in state.layers
                 if getattr(lay, "attn_freed" if kind == "attention" else "mlp_freed") and lay.layer_idx not in idx]
        if freed:
            raise PlanError(f"{kind} blocks {freed} cannot be kept: their weights were released (free_skipped, or "
                            "a hopscotch export that never wrote them); reload the model")
    skip_attn, skip_mlp = set(attention), set(mlp)
    compact = 0
    for layer in state.layers:
        layer.attn_skipped = layer.layer_idx in skip_attn
        layer.mlp_skipped = layer.layer_idx in skip_mlp
        layer.cache_index = None if layer.attn_skipped else compact
        compact += 0 if layer.attn_skipped else 1
    state._kept = None


@torch.no_grad()
def reset_scalars(model: nn.Module, value: float = 1.0) -> None:
    """Set every scalar of every layer to ``value`` (1.0: the unscaled model)."""
    for layer in patched_layers(model):
        for name in SCALAR_NAMES:
            getattr(layer, name).fill_(value)


def get_scalars(model: nn.Module) -> torch.Tensor:
    """All scalars as a float32 CPU tensor [num_layers, 4] (b_att, s_att, b_mlp, s_mlp)."""
    return torch.stack([layer.scalars() for layer in patched_layers(model)])


@torch.no_grad()
def set_scalars(model: nn.Module, scalars: torch.Tensor) -> None:
    """Load a [num_layers, 4] tensor of scalars (as ``get_scalars`` returns) into the layers."""
    layers = patched_layers(model)
    if tuple(scalars.shape) != (len(layers), len(SCALAR_NAMES)):
        raise ValueError(f"scalars have shape {tuple(scalars.shape)}; expected ({len(layers)}, {len(SCALAR_NAMES)})")
    for layer, row in zip(layers, scalars):
        for name, v in zip(SCALAR_NAMES, row):
            getattr(layer, name).copy_(v)
