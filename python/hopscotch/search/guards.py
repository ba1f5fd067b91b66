"""Guards on the final scalars' training: what keeps the scalars from fitting the task's answers at the cost of
the rest of what the model knows.

Trained on the task's answers alone (the paper's recipe), the scalars make up much of Hopscotch's lead on the task
and also raise Wikipedia perplexity (docs/RESULTS.md, "scalar ablation"). Each guard is one setting of the final
training; every setting at zero is the paper's training, exactly:

* ``generic_weight`` w (a mixed objective): every step's loss is the task loss plus w times the next-token loss on
  a batch of generic text (packed Wikipedia from the calibration half, disjoint from the perplexity slice), the
  generic batches taken in turn;
* ``pull`` lambda (a pull toward 1): every step's loss gains lambda * sum over scalars of (s - 1)^2;
* ``holdout`` f (early stopping): a seeded fraction f of the calibration rows is held out of training; the scalars
  after each epoch (and before the first) are scored on them, and the best are kept.

The final batch size (``final_batch_size``, a search setting of its own) is the fourth lever the comparison
looks at.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .fields import check_fields, setting

__all__ = ["ScalarGuard"]


@dataclass(frozen=True)
class ScalarGuard:
    """The guards of one final training; ``ScalarGuard()`` (all 0) is the paper's training."""

    generic_weight: float = setting(
        0.0, "weight of the next-token loss on generic text (packed Wikipedia) added to each step's loss of the "
        "final scalars (0 = off)", lambda v: v >= 0, "0 or more (0 = off)")
    pull: float = setting(
        0.0, "weight of a pull of the final scalars toward 1 (sum of (s - 1)^2) added to each step's loss (0 = off)",
        lambda v: v >= 0, "0 or more (0 = off)")
    holdout: float = setting(
        0.0, "share of the calibration rows held out of the final training; the scalars of the epoch best on them "
        "are kept (0 = off)", lambda v: 0 <= v < 1, "a fraction in [0, 1) of the calibration rows (0 = off)")

    def __post_init__(self):
        check_fields(self)

    @property
    def off(self) -> bool:
        """True for the paper's training (no guard)."""
        return self.generic_weight == 0 and self.pull == 0 and self.holdout == 0

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        on = [f"{k}={v:g}" for k, v in self.as_dict().items() if v]
        return ", ".join(on) or "none (the paper's training)"
