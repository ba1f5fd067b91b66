"""hopscotch: find the attention blocks a task does not need, skip them, and run the thinner model faster."""

from ._version import __version__
from .patch import HopscotchCache, apply_plan, current_plan, is_patched, patch_model, set_skips, unpatch_model
from .errors import ArgumentError, HopscotchError
from .plan import PlanError, SkipPlan
from .export import export_model, from_pretrained

__all__ = [
    "ArgumentError",
    "HopscotchCache",
    "HopscotchError",
    "PlanError",
    "SkipPlan",
    "__version__",
    "apply_plan",
    "current_plan",
    "export_model",
    "from_pretrained",
    "is_patched",
    "patch_model",
    "set_skips",
    "unpatch_model",
]
