"""apply_plan: put a SkipPlan on a loaded model (patching it if needed), all or nothing."""

from __future__ import annotations

import os

from torch import nn

from ..errors import check_arg
from ..plan import PlanError, SkipPlan
from .patcher import get_scalars, patch_model, patched_layers, set_scalars, set_skips

__all__ = ["apply_plan", "current_plan"]


def apply_plan(model: nn.Module, plan: SkipPlan, *, free_skipped: bool = False) -> nn.Module:
    """Apply ``plan`` to ``model`` and return it.

    The plan is validated against the model first (architecture, layer count, indices, scalars); a plan that does
    not fit raises ``PlanError`` and leaves the model exactly as it was, as does a model loaded from an export
    (its plan is already in its weights). Applying another plan later needs no
    reload (docs/ARCHITECTURE.md §2.5). ``free_skipped=True`` releases the weights of the skipped attention blocks
    and skipped MLP blocks (they can then never be kept again without reloading the model).
    """
    check_arg(isinstance(model, nn.Module), "apply_plan", "model", model,
              "a loaded transformers causal LM (a torch.nn.Module)")
    if not isinstance(plan, SkipPlan):
        hint = (f": load it with SkipPlan.load({str(plan)!r})" if isinstance(plan, (str, os.PathLike)) else "")
        check_arg(False, "apply_plan", "plan", plan, f"a SkipPlan{hint}")
    check_arg(isinstance(free_skipped, bool), "apply_plan", "free_skipped", free_skipped, "True or False")
    exported = getattr(model, "hopscotch_export", None)  # set by hopscotch.models when it loaded an export
    if exported is not None:
        raise PlanError(f"this model is a {exported.describe()} ({exported.path}): its plan is already folded into "
                        "its weights, so another plan cannot be applied on top; apply plans to the original model")
    plan.validate(model)
    patch_model(model)  # nothing changes on a model already patched
    set_skips(model, plan.skipped_attention, plan.skipped_mlp)  # refuses to keep a freed block, changing nothing
    set_scalars(model, plan.scalar_tensor())
    if free_skipped:
        for layer in patched_layers(model):
            if layer.attn_skipped and not layer.attn_freed:
                layer.free_attention()
            if layer.mlp_skipped and not layer.mlp_freed:
                layer.free_mlp()
    return model


def current_plan(model: nn.Module, **provenance) -> SkipPlan:
    """The plan a patched model runs now (its skips and scalars), with the given provenance."""
    layers = patched_layers(model)
    return SkipPlan.for_model(model, [lay.layer_idx for lay in layers if lay.attn_skipped],
                              [lay.layer_idx for lay in layers if lay.mlp_skipped], get_scalars(model), **provenance)
