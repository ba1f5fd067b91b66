"""What a search minimises: next-token NLL on given targets, or KL to the original model's distribution.

Batches are dicts of ``input_ids`` [B, T], ``attention_mask`` [B, T] and ``labels`` [B, T] (-100 where no
loss is taken: padding, and the prompt for prompt/answer data). ``self-distill`` is ``nll`` on labels that are
the original model's own greedy answers (built by ``hopscotch.data``); ``kl`` needs the original model's
log-probabilities at the labelled positions, computed once by ``teacher_logprobs``.

Only the positions that carry a loss go through the LM head: for answers after long prompts that is a small
fraction of the sequence, and the LM head (vocab x hidden) is the largest matrix of a small model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import base_model
from ..utils import model_device

__all__ = ["OBJECTIVES", "loss_positions", "final_hidden", "batch_loss", "teacher_logprobs", "head_logits"]

OBJECTIVES = ("nll", "self-distill", "kl")


def loss_positions(batch: dict) -> torch.Tensor:
    """Bool [B, T-1]: position t predicts token t+1 and carries a loss."""
    return batch["labels"][:, 1:] != -100


def final_hidden(model: nn.Module, batch: dict) -> torch.Tensor:
    """Last hidden state [B, T, H] (after the final norm) of the (patched or plain) model."""
    device = model_device(model)
    out = base_model(model)(input_ids=batch["input_ids"].to(device),
                            attention_mask=batch["attention_mask"].to(device), use_cache=False)
    return out.last_hidden_state


def head_logits(model: nn.Module, hidden: torch.Tensor, batch: dict) -> torch.Tensor:
    """Float32 logits [n, vocab] at the loss positions only."""
    pos = loss_positions(batch).to(hidden.device)
    return model.get_output_embeddings()(hidden[:, :-1][pos]).float()


def batch_loss(model: nn.Module, batch: dict, objective: str, teacher: torch.Tensor | None = None,
               hidden: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss over the batch's loss positions. ``hidden`` may be given when already computed."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")
    if hidden is None:
        hidden = final_hidden(model, batch)
    logits = head_logits(model, hidden, batch)
    if objective == "kl":
        if teacher is None:
            raise ValueError("objective 'kl' needs the original model's log-probabilities (teacher_logprobs)")
        t = teacher.to(logits.device).float()
        return F.kl_div(F.log_softmax(logits, -1), t, log_target=True, reduction="batchmean")
    targets = batch["labels"][:, 1:].to(logits.device)[loss_positions(batch).to(logits.device)]
    return F.cross_entropy(logits, targets)


@torch.no_grad()
def teacher_logprobs(model: nn.Module, batches: list[dict]) -> list[torch.Tensor]:
    """The original model's log-probabilities at each batch's loss positions (float16, on the CPU)."""
    out = []
    for batch in batches:
        logits = head_logits(model, final_hidden(model, batch), batch)
        out.append(F.log_softmax(logits, -1).to(torch.float16).cpu())
    return out
