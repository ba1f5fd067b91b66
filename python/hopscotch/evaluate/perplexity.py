"""Token-weighted NLL and perplexity over held-out text, and the held-out answer loss (the search's objective
measured on the evaluation split)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

from .loglik import batch_nll

__all__ = ["LossResult", "mean_nll", "perplexity", "answer_loss"]


@dataclass(frozen=True)
class LossResult:
    """``nll``: token-weighted mean NLL (nats); ``perplexity``: exp(nll); ``tokens``: tokens scored."""

    nll: float
    perplexity: float
    tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


def mean_nll(model, batches: Sequence[dict], *, progress: bool = True, desc: str = "nll") -> LossResult:
    """Token-weighted mean next-token NLL over the labelled positions of ``batches`` (no_grad)."""
    from tqdm.auto import tqdm

    total, count = 0.0, 0
    for batch in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
        nll, n = batch_nll(model, batch)
        total, count = total + nll, count + n
    if count == 0:
        raise ValueError("the batches have no labelled tokens (labels are all -100)")
    nll = total / count
    return LossResult(nll, math.exp(nll), count)


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
