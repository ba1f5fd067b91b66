"""Run lm-eval (optional dependency, extra ``eval``) on an already-loaded, possibly patched, model object.

:func:`write_lm_eval_task` writes our multiple-choice items as a JSONL file plus a task YAML that reads it
(``dataset_path: json``, ``output_type: multiple_choice``); :func:`lm_eval_accuracy` runs it through
``HFLM(pretrained=<model>, tokenizer=<tokenizer>)`` and ``lm_eval.simple_evaluate`` with
``TaskManager(include_path=<dir>)``, offline (``HF_DATASETS_OFFLINE=1``, ``HF_HUB_OFFLINE=1``).

lm-eval scores a choice as ``target_delimiter + choice`` after ``doc_to_text`` and normalises ``acc_norm`` by the
choice's length in characters, exactly as :func:`hopscotch.evaluate.multiple_choice_accuracy` does.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Sequence

from ..data.items import MultipleChoice

__all__ = ["write_lm_eval_task", "lm_eval_accuracy"]

_TASK_YAML = """\
# written by hopscotch.evaluate.write_lm_eval_task
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: query
doc_to_choice: choices
doc_to_target: gold
target_delimiter: {delimiter}
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def _import_lm_eval():
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise ImportError("the lm-eval adapter needs lm-eval: pip install 'hopscotch[eval]' "
                          f"(or pip install 'lm-eval>=0.4.13'); import failed with: {e}") from e
    try:  # datasets reads the offline switch at import; it may have been imported before we set it
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True
        if hasattr(datasets.config, "HF_DATASETS_OFFLINE"):
            datasets.config.HF_DATASETS_OFFLINE = True
    except ImportError:
        pass
    return lm_eval, HFLM, TaskManager


def write_lm_eval_task(items: Sequence[MultipleChoice], directory: str | os.PathLike, *,
                       task_name: str = "hopscotch_mc", delimiter: str = " ") -> Path:
    """Write ``<task_name>.jsonl`` (query, choices, gold, id) and ``<task_name>.yaml`` into ``directory``.

    Returns the YAML's path; pass ``directory`` to ``TaskManager(include_path=...)`` and ``task_name`` as the task.
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", task_name):
        raise ValueError(f"task name {task_name!r}: use letters, digits and underscores")
    if not items:
        raise ValueError("no multiple-choice items to write")
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / f"{task_name}.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps({"id": item.id, "query": item.query, "choices": list(item.choices),
                                "gold": item.gold}, ensure_ascii=False) + "\n")
    yaml_path = directory / f"{task_name}.yaml"
    yaml_path.write_text(_TASK_YAML.format(task=task_name, data=json.dumps(str(data)),
                                           delimiter=json.dumps(delimiter)), encoding="utf-8")
    return yaml_path


def lm_eval_accuracy(model, tokenizer, items: Sequence[MultipleChoice], *, batch_size: int = 8,
                     task_name: str = "hopscotch_mc", directory: str | os.PathLike | None = None,
                     delimiter: str = " ", return_loglikelihoods: bool = False) -> dict:
    """Evaluate ``items`` with lm-eval on the given model object; returns ``{"n", "acc", "acc_norm", "task"}``
    (plus ``"loglikelihoods"``: per item, each choice's log-likelihood in choice order, when asked for).

    The task files go to ``directory`` (default: a temporary directory removed afterwards).
    """
    lm_eval, HFLM, TaskManager = _import_lm_eval()
    with tempfile.TemporaryDirectory(prefix="hopscotch-lm-eval-") as tmp:
        folder = Path(directory) if directory is not None else Path(tmp)
        write_lm_eval_task(items, folder, task_name=task_name, delimiter=delimiter)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        out = lm_eval.simple_evaluate(model=lm, tasks=[task_name], task_manager=TaskManager(include_path=str(folder)),
                                      log_samples=return_loglikelihoods, bootstrap_iters=0, verbosity="WARNING")
    metrics = out["results"][task_name]
    result = {"n": len(items), "acc": float(metrics["acc,none"]), "acc_norm": float(metrics["acc_norm,none"]),
              "task": task_name}
    if return_loglikelihoods:
        samples = sorted(out["samples"][task_name], key=lambda s: s["doc_id"])
        result["loglikelihoods"] = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    return result
