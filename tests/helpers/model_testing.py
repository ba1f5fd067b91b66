"""Tiny random models of every supported architecture, and independent references for the patch tests."""

from __future__ import annotations

import pytest
import torch

from hopscotch.testing import (TINY_ARCHS, greedy_without_cache, tiny_config, tiny_model,  # noqa: F401
                               zeroed_attention)

# Per-dtype tolerance on logits of a whole (tiny) model, patched vs unpatched. The patched model rounds at
# different points than HF (one rounding per fused op instead of one per torch op: RMSNorm's weight multiply,
# the rotary, silu * up), so the logits differ by a few units in the last place of the dtype, amplified by depth.
LOGIT_TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-9, atol=1e-9),
             torch.bfloat16: dict(rtol=0.05, atol=0.08), torch.float16: dict(rtol=0.01, atol=0.01)}

ARCHS = list(TINY_ARCHS)


def left_padded_batch(vocab: int, lengths: list[int], pad_id: int = 0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for r, n in enumerate(lengths):
        ids[r, width - n:] = torch.randint(3, vocab, (n,), generator=g)
        mask[r, width - n:] = 1
    return ids, mask


needs_peft = pytest.mark.skipif(
    __import__("importlib").util.find_spec("peft") is None, reason="peft is not installed")


def calibration_batches(n=6, batch=3, seq=20, seed=1, vocab=97) -> list[dict]:
    """Seeded random calibration batches for the search tests; the first half of each row is a prompt (no loss)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, vocab, (batch, seq), generator=g)
        labels = ids.clone()
        labels[:, : seq // 2] = -100
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


def patched_and_original(model, new_tokens: int, **inputs):
    """``(original logits, patched logits, original greedy, patched greedy)`` of ``model`` on ``inputs``; the
    model is patched in between (and stays patched)."""
    from hopscotch import patch_model

    with torch.no_grad():
        ref = model(**inputs).logits
        ref_gen = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
        patch_model(model)
        out = model(**inputs).logits
        gen = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    return ref, out, ref_gen, gen
