"""Token-weighted NLL and perplexity over held-out text, and the held-out answer loss (the search's objective
measured on the evaluation split)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..progress import track
from .loglik import batch_nll_rows
from .stats import DEFAULT_RESAMPLES, Estimate, bootstrap_ci

__all__ = ["LossResult", "mean_nll", "perplexity", "answer_loss"]


@dataclass(frozen=True)
class LossResult:
    """``nll``: token-weighted mean NLL (nats); ``perplexity``: exp(nll); ``tokens``: tokens scored;
    ``item_nll`` / ``item_tokens``: per item (batch row: a prompt/answer pair or a packed text block), its NLL sum
    and token count, kept so that intervals (:meth:`nll_ci`) and paired comparisons are possible."""

    nll: float
    perplexity: float
    tokens: int
    item_nll: tuple[float, ...] = field(default=(), repr=False)
    item_tokens: tuple[int, ...] = field(default=(), repr=False)

    def nll_ci(self, *, resamples: int = DEFAULT_RESAMPLES, confidence: float = 0.95, seed: int = 0) -> Estimate:
        """Percentile-bootstrap interval of the token-weighted NLL, resampling items."""
        return bootstrap_ci(self.item_nll, self.item_tokens, resamples=resamples, confidence=confidence, seed=seed)

    def perplexity_ci(self, **kw) -> Estimate:
        return self.nll_ci(**kw).map(math.exp)

    def to_dict(self) -> dict:
        return {"nll": self.nll, "perplexity": self.perplexity, "tokens": self.tokens,
                "items": len(self.item_nll)}


def by_length(batches: Sequence[dict]) -> tuple[list[dict], list[int]]:
    """Right-padded batches regrouped longest row first, so that rows of like length share a batch and little of
    the compute goes to padding (35% of the tokens of BoolQ's evaluation batches in item order). Returns the new
    batches and ``order``: the i-th row of the new batches, counted across batches, is row ``order[i]`` of the
    input. Batches whose mask is not a prefix (left padding) or that carry other keys are returned as they are."""
    rows = []
    width = max((b["input_ids"].shape[0] for b in batches), default=0)  # rows per regrouped batch
    unchanged = list(batches), list(range(sum(x["input_ids"].shape[0] for x in batches)))
    for b in batches:
        if set(b) != {"input_ids", "attention_mask", "labels"}:
            return unchanged
        mask = b["attention_mask"]
        lengths = mask.sum(1)
        prefix = torch.arange(mask.shape[1])[None, :] < lengths[:, None]
        if not bool((mask.bool() == prefix).all()):
            return unchanged
        labelled_pad = (b["labels"] != -100) & ~prefix
        if bool((lengths == 0).any()) or bool(labelled_pad.any()):
            return unchanged
        for r, n in enumerate(lengths.tolist()):
            rows.append((b["input_ids"][r, :n], b["labels"][r, :n]))
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    out = []
    for start in range(0, len(order), width):
        chunk = [rows[i] for i in order[start:start + width]]
        w = len(chunk[0][0])
        ids = torch.zeros((len(chunk), w), dtype=chunk[0][0].dtype)
        mask = torch.zeros((len(chunk), w), dtype=torch.long)
        labels = torch.full((len(chunk), w), -100, dtype=chunk[0][1].dtype)
        for r, (x, y) in enumerate(chunk):
            ids[r, :len(x)], mask[r, :len(x)], labels[r, :len(y)] = x, 1, y
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out, order


def mean_nll(model, batches: Sequence[dict], *, progress: bool = True, desc: str = "nll") -> LossResult:
    """Token-weighted mean next-token NLL over the labelled positions of ``batches`` (no_grad). Rows are
    regrouped by length (:func:`by_length`); per-item values come back in input order."""
    batches, order = by_length(batches)
    row_sums, row_counts = [0.0] * len(order), [0] * len(order)
    done = 0
    for batch in track(batches, desc, enabled=progress, unit="batch"):
        s, n = batch_nll_rows(model, batch)
        for j, (x, c) in enumerate(zip(s, n)):
            row_sums[order[done + j]], row_counts[order[done + j]] = x, c
        done += len(n)
    keep = [i for i, c in enumerate(row_counts) if c > 0]  # a row with no labelled token is no item
    sums, counts = [row_sums[i] for i in keep], [row_counts[i] for i in keep]
    count = sum(counts)
    if count == 0:
        raise ValueError("the batches have no labelled tokens (labels are all -100)")
    nll = sum(sums) / count
    return LossResult(nll, math.exp(nll), count, tuple(sums), tuple(counts))


def perplexity(model, data, tokenizer=None, *, seq_len: int = 512, batch_size: int = 4,
               max_blocks: int | None = None, progress: bool = True) -> LossResult:
    """Perplexity of held-out text: exp of the token-weighted mean NLL over packed blocks.

    ``data``: batches (dicts with ``input_ids`` / ``attention_mask`` / ``labels``), or texts / Documents, which
    are packed with ``tokenizer`` into ``max_blocks`` blocks of ``seq_len`` (see ``hopscotch.data.pack_texts``).
    """
    batches = list(data)
    if batches and not isinstance(batches[0], dict):
        if tokenizer is None:
            raise ValueError("perplexity of texts needs the tokenizer")
        from ..data import pack_texts

        batches = pack_texts(batches, tokenizer, seq_len=seq_len, batch_size=batch_size, max_blocks=max_blocks,
                             config=model.config)
    return mean_nll(model, batches, progress=progress, desc="perplexity")


def answer_loss(model, data, tokenizer=None, *, batch_size: int = 8, max_length: int | None = None,
                progress: bool = True) -> LossResult:
    """Mean NLL of the answer tokens of prompt/answer items (the prompt is not scored).

    ``data``: batches, or PromptAnswer / MultipleChoice items (gold choice as answer) tokenised with ``tokenizer``;
    self-distillation targets keep their own token ids.
    """
    batches = list(data)
    if batches and not isinstance(batches[0], dict):
        if tokenizer is None:
            raise ValueError("answer_loss of items needs the tokenizer")
        from ..data import prompt_answer_batches

        batches = prompt_answer_batches(batches, tokenizer, batch_size=batch_size, max_length=max_length,
                                        config=model.config)
    return mean_nll(model, batches, progress=progress, desc="answer loss")
