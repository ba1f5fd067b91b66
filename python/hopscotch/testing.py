"""Independent references for checking a patched model, shared by `hopscotch doctor`, the benchmarks and the tests.

* ``tiny_model(arch)``: a small random model of each supported architecture (built from a config in well under a
  second, nothing downloaded), with weights large enough that every block matters.
* ``zeroed_attention(model, blocks)``: the *unpatched* HF model with those attention blocks replaced by an identity
  on the residual stream (the module outputs zeros and is not run). This is what skipping means, computed by HF's
  own layers: the reference a skipped patched model must match, and the "HF + identity" benchmark baseline.
* ``greedy_without_cache``: greedy decoding that recomputes the whole sequence at every step (no KV cache at all).
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn

from .arch import decoder_layers

__all__ = ["TINY_ARCHS", "tiny_config", "tiny_model", "zeroed_attention", "greedy_without_cache"]

# One tiny variant per supported architecture, plus MHA Llama (no GQA).
TINY_ARCHS = ("llama", "llama_mha", "qwen2", "mistral", "qwen3", "gemma3")


def tiny_config(arch: str, num_layers: int = 5, **overrides):
    """A small config of ``arch``: Qwen2 with q/k/v biases and sliding-window upper layers, Mistral sliding on every
    layer, Qwen3 with per-head q/k norms and an explicit head_dim, Gemma 3 with one KV head, sandwich norms, tanh
    GELU, sliding-window (window 5) and global layers with their own rotary bases and a query scale of its own."""
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(vocab_size=97, hidden_size=64, intermediate_size=88, num_hidden_layers=num_layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6,
                  pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=False)
    common.update(overrides)
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "llama_mha":
        return LlamaConfig(**{**common, "num_key_value_heads": 4})
    if arch == "qwen2":
        return Qwen2Config(**{**common, "use_sliding_window": True, "sliding_window": 6,
                              "max_window_layers": num_layers // 2})
    if arch == "mistral":
        return MistralConfig(**{**common, "sliding_window": 7})
    if arch == "qwen3":
        return Qwen3Config(**{**common, "head_dim": 16})
    if arch == "gemma3":
        types = ["full_attention" if i % 3 == 2 else "sliding_attention" for i in range(num_layers)]
        rope = {"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0}}
        return Gemma3TextConfig(**{**common, "num_key_value_heads": 1, "head_dim": 16, "query_pre_attn_scalar": 24,
                                   "sliding_window": 5, "layer_types": types, "rope_parameters": rope,
                                   "hidden_activation": "gelu_pytorch_tanh"})
    raise ValueError(f"unknown tiny architecture {arch!r}; expected one of {', '.join(TINY_ARCHS)}")


def tiny_model(arch: str, num_layers: int = 5, dtype=torch.float32, seed: int = 0, **overrides) -> nn.Module:
    """A random ``tiny_config(arch)`` model in eval mode (SDPA attention)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, num_layers, **overrides), attn_implementation="sdpa")
    with torch.no_grad():  # random weights big enough that every block matters
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0, 0.08)
    return model.to(dtype).eval()


class _IdentityAttention(nn.Module):
    """Stands in for an attention module: outputs zeros (an identity on the residual stream) and runs nothing."""

    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


@contextlib.contextmanager
def zeroed_attention(model: nn.Module, blocks: Iterable[int]) -> Iterator[None]:
    """The unpatched ``model`` with attention blocks ``blocks`` replaced by an identity, restored on exit.

    A replaced block writes nothing to a KV cache: use it with ``use_cache=False`` (or ``greedy_without_cache``)
    when block 0 is among ``blocks``, since HF reads the cache's length from layer 0.
    """
    layers = decoder_layers(model)
    saved = {i: layers[i].self_attn for i in blocks}
    try:
        for i in saved:
            layers[i].self_attn = _IdentityAttention()
        yield
    finally:
        for i, module in saved.items():
            layers[i].self_attn = module


def greedy_without_cache(model, ids, mask, new_tokens: int, eos_id: int | None = 1, pad_id: int = 0):
    """Greedy decoding that recomputes the whole sequence at every step (no KV cache at all); a row that has
    produced ``eos_id`` continues with ``pad_id``, as ``generate`` does."""
    ids, mask = ids.clone(), mask.clone()
    done = torch.zeros(ids.shape[0], 1, dtype=torch.bool, device=ids.device)
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
