"""Tiny random models of every supported architecture, and independent references for the patch tests."""

from __future__ import annotations

import contextlib

import pytest
import torch

# Per-dtype tolerance on logits of a whole (tiny) model, patched vs unpatched. The patched model rounds at
# different points than HF (one rounding per fused op instead of one per torch op: RMSNorm's weight multiply,
# the rotary, silu * up), so the logits differ by a few units in the last place of the dtype, amplified by depth.
LOGIT_TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-9, atol=1e-9),
             torch.bfloat16: dict(rtol=0.05, atol=0.08), torch.float16: dict(rtol=0.01, atol=0.01)}

ARCHS = ["llama", "llama_mha", "qwen2", "mistral", "qwen3"]


def tiny_config(arch: str, num_layers: int = 5, **overrides):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(vocab_size=97, hidden_size=64, intermediate_size=88, num_hidden_layers=num_layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6,
                  pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=False)
    common.update(overrides)
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "llama_mha":
        return LlamaConfig(**{**common, "num_key_value_heads": 4})
    if arch == "qwen2":  # q/k/v biases; the upper layers use sliding-window attention
        return Qwen2Config(**{**common, "use_sliding_window": True, "sliding_window": 6,
                              "max_window_layers": num_layers // 2})
    if arch == "mistral":  # sliding window on every layer
        return MistralConfig(**{**common, "sliding_window": 7})
    if arch == "qwen3":  # per-head q/k RMSNorm, explicit head_dim
        return Qwen3Config(**{**common, "head_dim": 16})
    raise ValueError(arch)


def tiny_model(arch: str, num_layers: int = 5, dtype=torch.float32, seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, num_layers, **overrides),
                                             attn_implementation="sdpa")
    with torch.no_grad():  # random weights big enough that every block matters
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0, 0.08)
    return model.to(dtype).eval()


@contextlib.contextmanager
def zeroed_attention(model, blocks):
    """The independent reference for skipping: the unpatched model with these attention modules returning zeros."""
    from hopscotch.arch import decoder_layers

    def hook(module, args, out):
        return (torch.zeros_like(out[0]), *out[1:])

    handles = [decoder_layers(model)[i].self_attn.register_forward_hook(hook) for i in blocks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def left_padded_batch(vocab: int, lengths: list[int], pad_id: int = 0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for r, n in enumerate(lengths):
        ids[r, width - n:] = torch.randint(3, vocab, (n,), generator=g)
        mask[r, width - n:] = 1
    return ids, mask


def greedy_without_cache(model, ids, mask, new_tokens: int, eos_id: int | None = 1, pad_id: int = 0):
    """Greedy decoding that recomputes the whole sequence at every step (no KV cache at all); a row that has
    produced ``eos_id`` continues with ``pad_id``, as ``generate`` does."""
    ids, mask = ids.clone(), mask.clone()
    done = torch.zeros(ids.shape[0], 1, dtype=torch.bool)
    for _ in range(new_tokens):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        if eos_id is not None:
            done |= nxt == eos_id
        ids = torch.cat([ids, nxt], dim=1)
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
    return ids


needs_peft = pytest.mark.skipif(
    __import__("importlib").util.find_spec("peft") is None, reason="peft is not installed")
