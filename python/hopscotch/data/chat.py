"""Task prompts in the model's chat format, for self-distillation targets from instruction-tuned models.

An instruction-tuned model asked a raw "Question: ...\\nAnswer:" prompt often answers with its end-of-turn token
at once (SmolLM2-135M-Instruct does for most ARC-Easy questions), which leaves nothing to distil. Wrapped in the
model's own chat template it answers in full, which is what the Hopscotch objective needs.
"""

from __future__ import annotations

from typing import Sequence

from .errors import DataError
from .items import MultipleChoice, PromptAnswer

__all__ = ["chat_prompts", "has_chat_template"]


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_prompts(items: Sequence[MultipleChoice | PromptAnswer | str], tokenizer, *,
                 strip_suffix: str = "Answer:") -> list[PromptAnswer]:
    """Each item's prompt as one user turn of the chat template, ready for the assistant's answer.

    ``strip_suffix`` (the rc format's trailing "Answer:") is removed first: the template marks where the answer
    goes. The answers are left empty; ``self_distill_targets`` fills them with the model's own.
    """
    if not has_chat_template(tokenizer):
        raise DataError("the tokenizer has no chat template; use the prompts as they are (chat=False)")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, MultipleChoice):
            item_id, text, source = item.id, item.query, item.source
        elif isinstance(item, PromptAnswer):
            item_id, text, source = item.id, item.prompt, item.source
        else:
            item_id, text, source = f"prompt:{i}", str(item), None
        text = text.strip()
        if strip_suffix and text.endswith(strip_suffix):
            text = text[: -len(strip_suffix)].strip()
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                               add_generation_prompt=True)
        out.append(PromptAnswer(id=item_id, prompt=prompt, answer="", source=source))
    return out
