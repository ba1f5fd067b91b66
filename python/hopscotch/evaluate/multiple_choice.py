"""Multiple-choice accuracy by log-likelihood: each choice is scored as ``delimiter + choice`` after the query.

``acc`` picks the choice with the highest summed log-probability; ``acc_norm`` divides each sum by the length of
the choice text in characters (lm-eval's ``acc_norm``, OLMES' per-character normalisation, without the
delimiter). Ties go to the first choice, as with numpy's argmax in lm-eval.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

from ..data.batching import encode_pair, fit_pair, pad_id, resolve_max_length
from ..data.items import MultipleChoice
from .loglik import continuation_logprobs

__all__ = ["MCResult", "multiple_choice_loglikelihoods", "multiple_choice_accuracy"]


@dataclass(frozen=True)
class MCResult:
    """``n`` items, ``acc`` (raw), ``acc_norm`` (per character); ``predictions`` per item when asked for: dicts
    with ``id``, ``gold``, ``pred``, ``pred_norm`` and the choices' ``loglikelihoods``."""

    n: int
    acc: float
    acc_norm: float
    predictions: list[dict] | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return asdict(self)

    def hits(self, normalised: bool = False) -> list[int]:
        """Per item, 1 when the (normalised) prediction is the gold choice (needs ``return_predictions``)."""
        if self.predictions is None:
            raise ValueError("per-item hits need multiple_choice_accuracy(..., return_predictions=True)")
        key = "pred_norm" if normalised else "pred"
        return [int(p[key] == p["gold"]) for p in self.predictions]


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def multiple_choice_loglikelihoods(model, tokenizer, items: Sequence[MultipleChoice], *, batch_size: int = 16,
                                   max_length: int | None = None, delimiter: str = " ",
                                   progress: bool = True) -> list[list[float]]:
    """Per item, the summed log-probability of each choice given the query (no_grad, batched).

    A query too long for the model loses tokens from the left, as in lm-eval; a choice that alone does not fit
    raises ``DataError`` naming the item's file and line.
    """
    limit = resolve_max_length(max_length, config=model.config)
    pairs, owners = [], []
    for k, item in enumerate(items):
        for choice in item.choices:
            ctx, cont = encode_pair(tokenizer, item.query, delimiter + choice)
            # lm-eval feeds at most max_length tokens and never the last one: context + continuation <= limit + 1
            pairs.append(fit_pair(ctx, cont, None if limit is None else limit + 1,
                                  source=item.source or f"item {item.id!r}"))
            owners.append(k)
    scores = continuation_logprobs(model, pairs, pad_id(tokenizer), batch_size=batch_size, progress=progress,
                                   desc="multiple choice")
    out: list[list[float]] = [[] for _ in items]
    for k, s in zip(owners, scores):
        out[k].append(s)
    return out


def multiple_choice_accuracy(model, tokenizer, items: Sequence[MultipleChoice], *, batch_size: int = 16,
                             max_length: int | None = None, delimiter: str = " ", return_predictions: bool = False,
                             progress: bool = True) -> MCResult:
    """Accuracy (raw and per-character normalised) of choosing the most likely choice; see the module doc."""
    if not items:
        raise ValueError("no multiple-choice items to evaluate")
    lls = multiple_choice_loglikelihoods(model, tokenizer, items, batch_size=batch_size, max_length=max_length,
                                         delimiter=delimiter, progress=progress)
    preds, hits, hits_norm = [], 0, 0
    for item, ll in zip(items, lls):
        pred = _argmax(ll)
        pred_norm = _argmax([s / len(c) for s, c in zip(ll, item.choices)])
        hits += pred == item.gold
        hits_norm += pred_norm == item.gold
        preds.append({"id": item.id, "gold": item.gold, "pred": pred, "pred_norm": pred_norm, "loglikelihoods": ll})
    n = len(items)
    return MCResult(n, hits / n, hits_norm / n, preds if return_predictions else None)
