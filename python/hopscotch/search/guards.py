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

import math
from dataclasses import asdict, dataclass

__all__ = ["ScalarGuard"]


@dataclass(frozen=True)
class ScalarGuard:
    generic_weight: float = 0.0
    pull: float = 0.0
    holdout: float = 0.0

    def __post_init__(self):
        for name in ("generic_weight", "pull", "holdout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"ScalarGuard({name}={value!r}): expected a finite number >= 0 (0 = off)")
        if self.holdout >= 1:
            raise ValueError(f"ScalarGuard(holdout={self.holdout!r}): expected a fraction below 1 of the "
                             "calibration rows to hold out (0 = off)")

    @property
    def off(self) -> bool:
        """True for the paper's training (no guard)."""
        return self.generic_weight == 0 and self.pull == 0 and self.holdout == 0

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        on = [f"{k}={v:g}" for k, v in self.as_dict().items() if v]
        return ", ".join(on) or "none (the paper's training)"
