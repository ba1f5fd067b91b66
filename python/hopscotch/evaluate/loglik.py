"""Log-likelihood primitives shared by every metric. They rely only on ``model(input_ids=..., attention_mask=...)``
returning ``.logits`` and on the model having parameters, so they work on any HF causal LM, patched or not."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from ..progress import track
from ..utils import model_device

__all__ = ["batch_nll", "batch_nll_rows", "continuation_logprobs"]


def _logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    device = model_device(model)
    # No KV cache: one forward scores the whole sequence (a cache would only be allocated and thrown away).
    return model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False).logits


@torch.no_grad()
def batch_nll_rows(model, batch: dict) -> tuple[list[float], list[int]]:
    """Per row of the batch (one item: a prompt/answer pair or a packed text block): the sum of next-token NLL
    over its labelled positions (labels != -100) and their number."""
    logits = _logits(model, batch["input_ids"], batch["attention_mask"])
    labels = batch["labels"][:, 1:].to(logits.device)
    pos = labels != -100
    rows = labels.shape[0]
    if not bool(pos.any()):
        return [0.0] * rows, [0] * rows
    nll = F.cross_entropy(logits[:, :-1][pos].float(), labels[pos], reduction="none").double()
    row_of = torch.arange(rows, device=pos.device)[:, None].expand_as(pos)[pos]
    sums = torch.zeros(rows, dtype=torch.float64, device=nll.device).index_add_(0, row_of, nll)
    return sums.tolist(), pos.sum(1).tolist()


@torch.no_grad()
def batch_nll(model, batch: dict) -> tuple[float, int]:
    """(sum of next-token NLL, number of tokens) over a batch's labelled positions (labels != -100)."""
    sums, counts = batch_nll_rows(model, batch)
    return float(sum(sums)), int(sum(counts))


@torch.no_grad()
def continuation_logprobs(model, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int,
                          batch_size: int = 16, progress: bool = False, desc: str = "log-likelihoods") -> list[float]:
    """Sum of log p(continuation | context) for each (context ids, continuation ids) pair, in input order.

    Pairs must already fit the model (see ``hopscotch.data.batching.fit_pair``) and have a non-empty context.
    The tokens fed are context + continuation without its last token (which predicts nothing); pairs that feed
    the same tokens (a question's one-token answers: BoolQ's yes / no) share one forward. Fed sequences run
    longest first in right-padded batches of ``batch_size``, and the results are put back in input order.
    """
    fed: dict[tuple[int, ...], list[int]] = {}  # tokens fed -> the pairs reading their logits
    for i, (ctx, cont) in enumerate(pairs):
        fed.setdefault(tuple(ctx) + tuple(cont)[:-1], []).append(i)
    seqs = sorted(fed, key=lambda t: -len(t))
    out = [0.0] * len(pairs)
    starts: Iterable[int] = range(0, len(seqs), batch_size)
    for start in track(starts, desc, enabled=progress, unit="batch"):
        chunk = seqs[start:start + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, seq in enumerate(chunk):
            ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, :len(seq)] = 1
        logits = _logits(model, ids, mask)
        for row, seq in enumerate(chunk):
            for i in fed[seq]:
                ctx, cont = pairs[i]
                n, m = len(ctx), len(cont)
                logp = F.log_softmax(logits[row, n - 1:n + m - 1].float(), dim=-1)
                target = torch.tensor(list(cont), dtype=torch.long, device=logp.device)
                out[i] = float(logp.gather(-1, target[:, None]).sum())
    return out
