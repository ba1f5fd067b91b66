"""Tokenisation into batches: dicts of ``input_ids`` [B, T] (long), ``attention_mask`` [B, T] (long) and ``labels``
[B, T] (long, -100 where no loss is taken), the format ``hopscotch.search`` consumes.

- Plain text is *packed*: every text's tokens followed by EOS, concatenated, cut into blocks of ``seq_len``.
- Prompt/answer items are right-padded; labels are -100 on the prompt and on padding, so only the answer counts.
  Prompt and answer are split the way lm-eval splits context and continuation (the context's trailing spaces
  move to the continuation; the whole text is tokenised once), so scores match lm-eval's.

Order is always the input order. A tokenizer without a pad token is fine: padded positions are masked out,
so the pad id is only a filler (pad, else EOS, else 0); the tokenizer is never modified.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from .errors import DataError
from .items import Document, MultipleChoice, PromptAnswer, to_prompt_answer

__all__ = ["pad_id", "resolve_max_length", "encode_pair", "fit_pair", "pack_texts", "pairs_to_batches",
           "prompt_answer_batches"]


def pad_id(tokenizer) -> int:
    """The id used to fill padded positions: the pad token, else EOS, else 0 (never seen by the loss)."""
    for tid in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(tid, int):
            return tid
    return 0


def resolve_max_length(*lengths: int | None, config=None) -> int | None:
    """The longest sequence allowed: the smallest of the given lengths and ``config.max_position_embeddings``
    (None where nothing limits it)."""
    limits = [n for n in (*lengths, getattr(config, "max_position_embeddings", None)) if n]
    return min(limits) if limits else None


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) as lm-eval makes them for a causal LM.

    Trailing spaces of the context move to the continuation; ``context + continuation`` is tokenised once with the
    tokenizer's default special tokens and split after the context's own tokens. A context that is empty (or only
    spaces) becomes the BOS (else EOS) token, as lm-eval does.
    """
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    ctx = list(tokenizer(context)["input_ids"]) if context else []
    if not ctx:  # nothing to condition on: the first answer token needs a position that predicts it
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return [prefix], list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
    whole = tokenizer(context + continuation)["input_ids"]
    return ctx, list(whole[len(ctx):])


def fit_pair(ctx: Sequence[int], cont: Sequence[int], limit: int | None, *, truncate: bool = True,
             source: str | None = None) -> tuple[list[int], list[int]]:
    """Make ``ctx + cont`` fit in ``limit`` tokens by dropping context tokens from the left.

    Raises :class:`DataError` (naming ``source``) when the continuation is empty, when it alone leaves no room
    for one context token, or when ``truncate`` is False and the pair is too long.
    """
    ctx, cont = list(ctx), list(cont)
    if not cont:
        raise DataError("the answer is empty after tokenisation; expected at least one answer token", source)
    if limit is None or len(ctx) + len(cont) <= limit:
        return ctx, cont
    if len(cont) >= limit or not truncate:
        why = (f"the answer alone is {len(cont)} tokens" if len(cont) >= limit
               else "truncation is off")
        raise DataError(f"prompt + answer are {len(ctx) + len(cont)} tokens, longer than the {limit} the model "
                        f"allows, and {why}; shorten the item or raise the max length", source)
    return ctx[len(ctx) + len(cont) - limit:], cont


def _texts(texts: Iterable) -> Iterable[str]:
    for t in texts:
        yield t.text if isinstance(t, Document) else t


def pack_texts(texts: Iterable[str | Document], tokenizer, *, seq_len: int = 512, batch_size: int = 4,
               max_blocks: int | None = None, drop_last: bool = True, separator_id: int | None = None,
               max_length: int | None = None, config=None) -> list[dict]:
    """Pack texts into blocks of ``seq_len`` tokens (each text followed by ``separator_id``, default EOS) and
    group the blocks into batches of ``batch_size``.

    Every token of a block carries a label. The last, partial block is dropped (``drop_last``) or padded
    (labels -100, attention_mask 0). ``max_blocks`` stops tokenising once that many blocks are full.
    ``seq_len`` must fit the model (``max_length`` / ``config.max_position_embeddings``).
    """
    limit = resolve_max_length(max_length, config=config)
    if limit is not None and seq_len > limit:
        raise ValueError(f"seq_len={seq_len} is longer than the {limit} tokens the model allows")
    if seq_len < 2 or batch_size < 1:
        raise ValueError(f"need seq_len >= 2 and batch_size >= 1, got {seq_len}, {batch_size}")
    sep = tokenizer.eos_token_id if separator_id is None else separator_id
    if sep is None:
        raise ValueError("the tokenizer has no EOS token; pass separator_id= to separate the packed texts")
    stream: list[int] = []
    texts = list(_texts(texts))
    want = None if max_blocks is None else max_blocks * seq_len
    for start in range(0, len(texts), 256):  # tokenise in chunks so max_blocks stops early
        for ids in tokenizer(texts[start:start + 256], add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            stream.append(sep)
        if want is not None and len(stream) >= want:
            break
    if not stream:
        raise DataError("no text to pack; expected at least one non-empty text")
    blocks = [stream[i:i + seq_len] for i in range(0, len(stream), seq_len)]
    if len(blocks[-1]) < seq_len and (drop_last or (max_blocks is not None and len(blocks) > max_blocks)):
        blocks.pop()
    if max_blocks is not None:
        blocks = blocks[:max_blocks]
    if not blocks:
        raise DataError(f"the texts hold {len(stream)} tokens, less than one block of {seq_len}; use a smaller "
                        "seq_len or drop_last=False")
    return pairs_to_batches([([], b) for b in blocks], pad_id(tokenizer), batch_size, seq_len=seq_len)


def pairs_to_batches(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad: int, batch_size: int,
                     seq_len: int | None = None) -> list[dict]:
    """Right-padded batches of (context ids, continuation ids); labels only on the continuation.

    Pads to ``seq_len`` when given (every batch the same shape), else to the longest sequence of the batch.
    """
    batches = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        width = seq_len or max(len(c) + len(a) for c, a in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        for row, (ctx, cont) in enumerate(chunk):
            n, m = len(ctx), len(cont)
            if n + m > width:
                raise ValueError(f"sequence of {n + m} tokens does not fit seq_len={width}")
            ids[row, :n + m] = torch.tensor(list(ctx) + list(cont), dtype=torch.long)
            mask[row, :n + m] = 1
            labels[row, n:n + m] = ids[row, n:n + m]
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return batches


def prompt_answer_batches(items: Sequence[PromptAnswer | MultipleChoice], tokenizer, *, batch_size: int = 8,
                          seq_len: int | None = None, max_length: int | None = None, config=None,
                          truncate: bool = True, delimiter: str = " ") -> list[dict]:
    """Batches of prompt/answer items (multiple-choice items use their gold choice after ``delimiter``).

    Labels are -100 on the prompt and on padding. Items that already carry ``prompt_ids`` / ``answer_ids``
    (self-distillation targets) are used as they are. Sequences longer than the limit (the smallest of ``seq_len``,
    ``max_length`` and ``config.max_position_embeddings``) lose prompt tokens from the left when ``truncate``;
    otherwise, or when the answer alone does not fit, :class:`DataError` names the item's file and line.
    """
    limit = resolve_max_length(seq_len, max_length, config=config)
    pairs = []
    for item in to_prompt_answer(items, delimiter):
        if item.prompt_ids is not None and item.answer_ids is not None:
            ctx, cont = item.prompt_ids, item.answer_ids
        else:
            ctx, cont = encode_pair(tokenizer, item.prompt, item.answer)
        pairs.append(fit_pair(ctx, cont, limit, truncate=truncate, source=item.source or f"item {item.id!r}"))
    return pairs_to_batches(pairs, pad_id(tokenizer), batch_size, seq_len=seq_len)
