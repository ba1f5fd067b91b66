"""Which ops a patched tiny model dispatches (an OpCounter sees every torch.ops.hopscotch_ext op) and how many calls
the pure-torch references served (hopscotch_ext.reference_calls()), at inference and in a scalar-training step.
Shared by tests/test_dispatch.py and the subprocess it runs with the extension disabled."""

from __future__ import annotations

import torch

import hopscotch_ext
from hopscotch.doctor import OpCounter
from hopscotch.patch import patch_model, set_skips
from tests.helpers.model_testing import tiny_model


def inference_counts(arch: str = "llama") -> dict:
    """A forward with the model's own KV cache and one without, attention block 1 skipped."""
    model = tiny_model(arch)
    patch_model(model)
    set_skips(model, attention=[1])
    before = hopscotch_ext.reference_calls()
    with OpCounter() as counter, torch.no_grad():
        model(torch.tensor([[5, 6, 7, 8, 9]]))
        model(torch.tensor([[5, 6, 7, 8, 9]]), use_cache=False)
    return {"ops": dict(counter.hopscotch_ops()), "reference": dict(hopscotch_ext.reference_calls() - before)}


def training_counts() -> dict:
    """One epoch of train_scalars on one batch; ``scalars_moved`` says whether any scalar changed."""
    from hopscotch.search.train import train_scalars

    model = tiny_model("llama")
    patch_model(model)
    ids = torch.randint(3, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :4] = -100
    batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}]
    start = [p.detach().clone() for p in model.parameters() if p.requires_grad and p.dim() == 0]
    before = hopscotch_ext.reference_calls()
    with OpCounter() as counter:
        train_scalars(model, batches, objective="nll", epochs=1, lr=1e-2, seed=0)
    moved = any(not torch.equal(a, p.detach()) for a, p in
                zip(start, [p for p in model.parameters() if p.requires_grad and p.dim() == 0]))
    return {"ops": dict(counter.hopscotch_ops()), "reference": dict(hopscotch_ext.reference_calls() - before),
            "scalars_moved": moved}
