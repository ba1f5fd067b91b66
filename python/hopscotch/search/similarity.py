"""LLM-Drop's module importance: cosine similarity between a module's input X and its output X + Module(Norm(X)).

"What Matters in Transformers? Not All Attention is Needed" (arXiv 2406.15786) scores each attention block, MLP
block or whole decoder layer by the similarity of the residual stream before and after it, averaged over every
(non-padding) token of the calibration data; the most similar modules matter least and are dropped first.
ShortGPT's Block Influence (arXiv 2403.03853) is 1 - the block score.

Scores are measured with forward hooks on the model's own (unpatched) HF modules, so they are exactly the
paper's definition whatever else hopscotch does. Blocks already dropped (iterative variants) are made
identities by the same hooks, as the LLM-Drop code does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

from ..arch import base_model, decoder_layers
from ..progress import track
from ..utils import model_device

__all__ = ["ModuleScores", "similarity_scores"]


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@dataclass
class ModuleScores:
    """Mean cosine similarity per attention block, MLP block and whole layer (higher = less important)."""

    attn: list[float]
    mlp: list[float]
    block: list[float]
    tokens: int
    extra: dict = field(default_factory=dict)


class _Accumulator:
    def __init__(self, n_layers: int, device: torch.device):
        self.sums = torch.zeros(3, n_layers, dtype=torch.float64, device=device)
        self.mask: torch.Tensor | None = None  # [batch, seq] bool, set per batch
        self.x: dict[int, torch.Tensor] = {}
        self.h1: dict[int, torch.Tensor] = {}

    def add(self, kind: int, layer: int, before: torch.Tensor, after: torch.Tensor) -> None:
        cos = torch.nn.functional.cosine_similarity(before.float(), after.float(), dim=-1)  # [batch, seq]
        if self.mask is not None:
            cos = cos[self.mask]
        self.sums[kind, layer] += cos.sum().double()


@torch.no_grad()
def similarity_scores(model: nn.Module, batches: Iterable[dict], *, dropped_attn: Iterable[int] = (),
                      dropped_mlp: Iterable[int] = (), progress: bool = False) -> ModuleScores:
    """Mean cosine similarity of every module's input and output over all non-padding tokens of ``batches``.

    ``batches`` yield dicts with ``input_ids`` and optionally ``attention_mask``. Modules in ``dropped_*`` are
    identities during scoring (their own score is still measured, as the similarity of the identity: 1.0).
    """
    layers = decoder_layers(model)
    n = len(layers)
    device = model_device(model)
    acc = _Accumulator(n, device)
    dropped_attn, dropped_mlp = set(dropped_attn), set(dropped_mlp)
    handles = []

    def layer_pre(i):
        def hook(module, args, kwargs):
            acc.x[i] = args[0] if args else kwargs["hidden_states"]
        return hook

    def attn_post(i):
        def hook(module, args, out):
            a = _first(out)
            if i in dropped_attn:
                a = torch.zeros_like(a)
            h1 = acc.x[i] + a
            acc.h1[i] = h1
            acc.add(0, i, acc.x[i], h1)
            if i in dropped_attn:
                return (a, *out[1:]) if isinstance(out, tuple) else a
            return None
        return hook

    def mlp_post(i):
        def hook(module, args, out):
            m = torch.zeros_like(out) if i in dropped_mlp else out
            acc.add(1, i, acc.h1[i], acc.h1[i] + m)
            return m if i in dropped_mlp else None
        return hook

    def layer_post(i):
        def hook(module, args, kwargs, out):
            acc.add(2, i, acc.x[i], _first(out))
            acc.x.pop(i, None)
            acc.h1.pop(i, None)
        return hook

    tokens = 0
    try:
        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(layer_pre(i), with_kwargs=True))
            handles.append(layer.self_attn.register_forward_hook(attn_post(i)))
            handles.append(layer.mlp.register_forward_hook(mlp_post(i)))
            handles.append(layer.register_forward_hook(layer_post(i), with_kwargs=True))
        for batch in track(batches, "similarity scores", enabled=progress, leave=False, unit="batch"):
            ids = batch["input_ids"].to(device)
            mask = batch.get("attention_mask")
            mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.to(device).bool()
            acc.mask = mask
            base_model(model)(input_ids=ids, attention_mask=mask.long(), use_cache=False)  # no LM head needed
            tokens += int(mask.sum())
    finally:
        for h in handles:
            h.remove()
    if tokens == 0:
        raise ValueError("similarity_scores: the calibration batches hold no (non-padding) tokens")
    means = (acc.sums / tokens).tolist()
    return ModuleScores(attn=means[0], mlp=means[1], block=means[2], tokens=tokens)
