"""Self-distillation targets: the original model's own greedy answers to the task prompts (Hopscotch's objective).

Answers are generated once, in left-padded batches, and cached as JSON under ``cache_dir()/targets/<key>.json``,
where the key hashes the model's identity (its config and a sample of every weight), the prompts' token ids and
the generation settings; a later call with the same three loads the file instead of generating.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Sequence

import torch

from ..atomic import atomic_write_text
from ..packaged import cache_dir
from ..progress import track
from ..utils import model_device
from .batching import pad_id, resolve_max_length
from .errors import DataError
from .items import MultipleChoice, PromptAnswer

__all__ = ["weights_fingerprint", "self_distill_targets", "prompt_token_ids", "cut_at_stop"]

_log = logging.getLogger(__name__)
_FORMAT_VERSION = 1  # bump when what is generated or stored changes


def weights_fingerprint(model) -> str:
    """Identity of a model's weights: a hash of its config (without paths and versions) and of 64 evenly spaced
    values of every weight (cached targets belong to the weights that generated them). The architecture alone:
    ``plan.architecture_fingerprint``."""
    config = {k: v for k, v in model.config.to_dict().items()
              if not k.startswith("_") and k != "transformers_version"}
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 64)][:64].contiguous().cpu()
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        h.update(sample.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def _prompt_of(item) -> tuple[str, str, str | None]:
    """(id, prompt text, source) of a str, PromptAnswer or MultipleChoice."""
    if isinstance(item, MultipleChoice):
        return item.id, item.query, item.source
    if isinstance(item, PromptAnswer):
        return item.id, item.prompt, item.source
    if isinstance(item, str):
        return "", item, None
    raise TypeError(f"expected prompts as str, PromptAnswer or MultipleChoice, got {type(item).__name__}")


def prompt_token_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt with the tokenizer's default special tokens, except a BOS the text already holds.

    A chat template that starts with ``bos_token`` (Llama 3's, Mistral's, ...) renders the BOS into the text;
    tokenising that with the default special tokens would put a second BOS in front. Such text is tokenised
    without added special tokens, and a doubled leading BOS that slips through anyway is cut to one.
    """
    bos, bos_id = getattr(tokenizer, "bos_token", None), getattr(tokenizer, "bos_token_id", None)
    if bos and text.startswith(bos):
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    else:
        ids = list(tokenizer(text)["input_ids"])
    while bos_id is not None and len(ids) >= 2 and ids[0] == ids[1] == bos_id:
        ids = ids[1:]
    return ids


def _eos_ids(model, tokenizer) -> list[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("neither the model's generation config nor the tokenizer names an EOS token")
    return sorted(set(ids))


def _generate(model, prompts: list[list[int]], eos: list[int], pad: int, max_new_tokens: int,
              batch_size: int, progress: bool) -> list[list[int]]:
    from transformers import GenerationConfig

    gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=eos,
                           pad_token_id=pad)
    device = model_device(model)
    answers = []
    was_training = model.training
    model.eval()
    try:
        for start in track(range(0, len(prompts), batch_size), "self-distillation targets", enabled=progress,
                           unit="batch"):
            chunk = prompts[start:start + batch_size]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, p in enumerate(chunk):  # left padding: every prompt ends at the same column
                ids[row, width - len(p):] = torch.tensor(p)
                mask[row, width - len(p):] = 1
            with torch.no_grad():
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen)
            for row in out[:, width:].tolist():
                stop = next((i for i, t in enumerate(row) if t in eos), None)
                answers.append(row if stop is None else row[:stop + 1])  # the EOS is part of the answer
    finally:
        model.train(was_training)
    return answers


def cut_at_stop(tokenizer, answer: list[int], stop: Sequence[str]) -> list[int]:
    """The answer up to (not including) the first stop string: the longest token prefix whose text ends before it."""
    if not stop:
        return answer
    text = tokenizer.decode(answer, skip_special_tokens=False)
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    if cut < 0:
        return answer
    n = 0
    while n < len(answer) and len(tokenizer.decode(answer[:n + 1], skip_special_tokens=False)) <= cut:
        n += 1
    return answer[:n]


def self_distill_targets(model, tokenizer, items: Sequence[str | PromptAnswer | MultipleChoice], *,
                         max_new_tokens: int = 32, stop: Sequence[str] = (), batch_size: int = 8,
                         max_length: int | None = None, truncate: bool = True, cache: bool = True,
                         progress: bool = True) -> list[PromptAnswer]:
    """The model's greedy answers to each item's prompt (the query of a multiple-choice item), in input order.

    ``model`` must be the ORIGINAL (unpatched) model. An answer has up to ``max_new_tokens`` tokens and ends after
    the first EOS (kept, so the model learns to stop) or before the first of the ``stop`` strings (e.g.
    ``["\\n\\n", "Question:"]`` for few-shot prompts); an answer cut to nothing is returned empty, and
    ``prompt_answer_batches`` refuses it. Prompts are tokenised with the tokenizer's default special tokens, never
    with two BOS when a chat template already put one in the text (:func:`prompt_token_ids`); one
    longer than the model allows less ``max_new_tokens`` loses tokens from the left (``truncate``) or raises
    :class:`DataError`. Returns :class:`PromptAnswer` items with ``prompt_ids`` / ``answer_ids`` set (batch them
    with ``prompt_answer_batches``); ``answer`` is the decoded text. With ``cache``, results are read from, or
    written atomically to, ``cache_dir()/targets/<hash of model, prompts and settings>.json``.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    limit = resolve_max_length(max_length, config=model.config)
    ids, texts, sources, prompt_ids = [], [], [], []
    for i, item in enumerate(items):
        item_id, text, source = _prompt_of(item)
        toks = prompt_token_ids(tokenizer, text)
        if not toks:
            raise DataError("the prompt is empty; expected text to answer", source or f"prompt {i}")
        if limit is not None and len(toks) + max_new_tokens > limit:
            if not truncate or limit - max_new_tokens < 1:
                raise DataError(f"the prompt is {len(toks)} tokens; with {max_new_tokens} new tokens that exceeds "
                                f"the {limit} the model allows", source or f"prompt {i}")
            toks = toks[len(toks) + max_new_tokens - limit:]
        ids.append(item_id or f"prompt:{i}")
        texts.append(text)
        sources.append(source)
        prompt_ids.append(toks)
    eos = _eos_ids(model, tokenizer)
    settings = {"max_new_tokens": max_new_tokens, "decoding": "greedy", "eos_token_ids": eos,
                "stop": list(stop), "format": _FORMAT_VERSION}
    key = hashlib.sha256(json.dumps({"model": weights_fingerprint(model), "settings": settings,
                                     "prompts": prompt_ids}).encode()).hexdigest()[:32]
    path = cache_dir() / "targets" / f"{key}.json"
    answers = None
    if cache and path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            if stored.get("key") == key and len(stored["answers"]) == len(prompt_ids):
                answers = stored["answers"]
                _log.info("loaded %d self-distillation targets from %s", len(answers), path)
        except (OSError, ValueError, KeyError):
            answers = None  # a damaged cache file is regenerated
    if answers is None:
        answers = _generate(model, prompt_ids, eos, pad_id(tokenizer), max_new_tokens, batch_size, progress)
        answers = [cut_at_stop(tokenizer, a, stop) for a in answers]
        if cache:
            atomic_write_text(path, json.dumps({"key": key, "settings": settings, "n": len(answers),
                                                "answers": answers}))
    return [PromptAnswer(item_id, text, tokenizer.decode(ans, skip_special_tokens=True), tuple(p), tuple(ans), src)
            for item_id, text, src, p, ans in zip(ids, texts, sources, prompt_ids, answers)]
