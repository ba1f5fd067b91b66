"""Guards on the final scalars' training: what keeps the scalars from fitting the task's answers at the cost of
the rest of what the model knows.

Trained on the task's answers alone (the paper's recipe), the scalars make up much of Hopscotch's lead on the task
and also raise Wikipedia perplexity (docs/RESULTS.md, "scalar ablation"). Each guard is one setting of the final
training; every setting at zero is the paper's training, exactly:

* ``generic_weight`` w (a mixed objective): every step's loss is the task loss plus w times the next-token loss on
  the next stretch of generic text (packed Wikipedia from the calibration half, disjoint from the perplexity
  slice) as many tokens long as the step's task batch (``GenericText``): the term costs what the task's does, so
  the final training costs about twice the paper's, not more;
* ``pull`` lambda (a pull toward 1): every step's loss gains lambda * sum over scalars of (s - 1)^2;
* ``holdout`` f (early stopping): a seeded fraction f of the calibration rows is held out of training; the scalars
  after each epoch (and before the first) are scored on them, and the best are kept.

The final batch size (``final_batch_size``, a search setting of its own) is the fourth lever the comparison
looks at. ``ScalarGuard()`` is what a search ships with: generic weight 1.5, chosen by that comparison
(docs/RESULTS.md, "Guards on the scalars", where its figures are); ``ScalarGuard.paper()`` (every guard off) is the
paper's training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .fields import check_fields, setting

__all__ = ["GenericText", "ScalarGuard"]


@dataclass(frozen=True)
class ScalarGuard:
    """The guards of one final training: ``ScalarGuard()`` is the search's default (generic weight 1.5),
    ``ScalarGuard.paper()`` the paper's training (every guard off)."""

    generic_weight: float = setting(
        1.5, "weight of the next-token loss on generic text (packed Wikipedia, as many tokens as each step's task "
        "batch) added to each step's loss of the final scalars (0 = off: with --pull and --holdout 0, the paper's "
        "training, task data only)",
        lambda v: v >= 0, "0 or more (0 = off)")
    pull: float = setting(
        0.0, "weight of a pull of the final scalars toward 1 (sum of (s - 1)^2) added to each step's loss (0 = off)",
        lambda v: v >= 0, "0 or more (0 = off)")
    holdout: float = setting(
        0.0, "share of the calibration rows held out of the final training; the scalars of the epoch best on them "
        "are kept (0 = off)", lambda v: 0 <= v < 1, "a fraction in [0, 1) of the calibration rows (0 = off)")

    def __post_init__(self):
        check_fields(self)

    @classmethod
    def paper(cls) -> "ScalarGuard":
        """Every guard off: the paper's final training, on the task's batches alone."""
        return cls(generic_weight=0.0, pull=0.0, holdout=0.0)

    @property
    def off(self) -> bool:
        """True for the paper's training (no guard)."""
        return self.generic_weight == 0 and self.pull == 0 and self.holdout == 0

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        on = [f"{k}={v:g}" for k, v in self.as_dict().items() if v]
        return ", ".join(on) or "none (the paper's training)"


class GenericText:
    """What the generic guard reads: packed text batches as one token stream (their rows in order, padding left out),
    taken in turn in stretches of the length asked, wrapping round at the end."""

    def __init__(self, batches: list[dict]):
        rows = []
        for b in batches:
            ids, mask = b["input_ids"], b.get("attention_mask")
            rows += [ids[r] if mask is None else ids[r][mask[r].bool()] for r in range(ids.shape[0])]
        self.stream = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
        if self.stream.numel() < 2:
            raise ValueError(f"generic text of {self.stream.numel()} tokens: expected at least 2 to take a "
                             "next-token loss on")
        self.position = 0

    def take(self, tokens: int) -> dict:
        """The next ``tokens`` tokens (at least 2, at most the whole stream) as a one-row batch, every next token
        labelled."""
        total = self.stream.numel()
        n = max(2, min(int(tokens), total))
        ids = self.stream[(self.position + torch.arange(n)) % total].unsqueeze(0)
        self.position = (self.position + n) % total
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
