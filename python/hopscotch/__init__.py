"""hopscotch: find the attention blocks a task does not need, skip them, and run the thinner model faster."""

__version__ = "0.1.0"

from .patch import (HopscotchCache, apply_plan, current_plan, is_patched, patch_model, set_skips,  # noqa: E402
                    unpatch_model)
from .errors import ArgumentError, HopscotchError  # noqa: E402
from .plan import PlanError, SkipPlan  # noqa: E402
from .export import export_model, from_pretrained  # noqa: E402

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
