"""Training Hopscotch's scalars with the base weights frozen, and counting the work it takes.

Work is counted in *token-passes*: one token through the whole model forward is one forward token-pass, and
its backward one backward token-pass; a forward through only some layers counts that fraction of a pass. The
fast search is judged against the faithful one by these counts (and by wall time), not by assumption.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ..patch import patched_layers
from .objectives import batch_loss, loss_positions

__all__ = ["PassCounter", "batch_tokens", "frozen_base", "scalar_parameters", "train_scalars"]


@dataclass
class PassCounter:
    """Work done: token-passes forward and backward, and the seconds the recorded steps took."""

    forward: float = 0.0
    backward: float = 0.0
    seconds: float = 0.0

    @property
    def total(self) -> float:
        return self.forward + self.backward

    def as_dict(self) -> dict:
        return {"forward": round(self.forward), "backward": round(self.backward), "total": round(self.total)}

    def add_record(self, rec: dict) -> None:
        """Count the work of a step recorded in the search state (done now or by an interrupted run)."""
        self.forward += rec["passes"][0]
        self.backward += rec["passes"][1]
        self.seconds += rec.get("seconds", 0.0)


def batch_tokens(batch: dict) -> int:
    """Tokens a forward over ``batch`` processes (non-padding)."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


def scalar_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every scalar of every patched layer (what Hopscotch trains)."""
    return [p for layer in patched_layers(model) for p in layer.parameters(recurse=False)]


@contextlib.contextmanager
def frozen_base(model: nn.Module):
    """Only the scalars require gradients inside; every parameter's flag is restored afterwards."""
    params = list(model.parameters())
    saved = [p.requires_grad for p in params]
    scalars = {id(p) for p in scalar_parameters(model)}
    try:
        for p in params:
            p.requires_grad_(id(p) in scalars)
        yield
    finally:
        for p, flag in zip(params, saved):
            p.requires_grad_(flag)


def train_scalars(model: nn.Module, batches: list[dict], *, objective: str, epochs: int, lr: float, seed: int,
                  teacher: list | None = None, counter: PassCounter | None = None, desc: str | None = None,
                  progress: bool = False) -> list[float]:
    """Adam on the scalars for ``epochs`` passes over ``batches`` (shuffled by ``seed``); returns each epoch's
    token-weighted mean training loss."""
    params = scalar_parameters(model)
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    epoch_losses = []
    was_training = model.training
    model.eval()  # no dropout: the scalars are fitted to the deterministic model
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs * len(batches), desc=desc or "train scalars", leave=False)
    try:
        with frozen_base(model), torch.enable_grad():
            for _ in range(epochs):
                total, weight = 0.0, 0
                for i in torch.randperm(len(batches), generator=gen).tolist():
                    batch = batches[i]
                    loss = batch_loss(model, batch, objective, teacher[i] if teacher is not None else None)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    n = int(loss_positions(batch).sum())
                    total += loss.item() * n
                    weight += n
                    if counter is not None:
                        counter.forward += batch_tokens(batch)
                        counter.backward += batch_tokens(batch)
                    if bar:
                        bar.update()
                        bar.set_postfix(loss=f"{total / max(weight, 1):.4f}")
                epoch_losses.append(total / max(weight, 1))
    finally:
        if bar:
            bar.close()
        model.train(was_training)
    return epoch_losses
