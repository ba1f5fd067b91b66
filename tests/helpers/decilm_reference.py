"""A minimal reader of the DeciLM (``nemotron-nas``) checkpoint format, written from its documented semantics only.

Each layer is a Llama layer whose attention and FFN may be a no-op (``block_configs[i].attention.no_op`` /
``.ffn.no_op``: the block and the norm in front of it are absent); KV heads = num_attention_heads /
n_heads_in_group; FFN width = the multiple of 256 at or above int(2 * ffn_mult * hidden / 3). Default RoPE only.
Float64 throughout: it is the oracle for the decilm export tests, independent of transformers and of hopscotch.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() \
        else ["model.safetensors"]
    sd = {}
    for f in files:
        sd.update(load_file(str(path / f)))
    return {k: v.double() for k, v in sd.items()}


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def decilm_logits(path: str | Path, input_ids: torch.Tensor) -> torch.Tensor:
    path = Path(path)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["architectures"] == ["DeciLMForCausalLM"] and cfg["model_type"] == "nemotron-nas"
    sd = _weights(path)
    hidden, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["rms_norm_eps"]
    hd = cfg.get("head_dim") or hidden // heads
    rope = cfg.get("rope_parameters") or {}
    assert rope.get("rope_type", "default") == "default", "this reader knows default RoPE only"
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))

    def norm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def lin(x, name):
        return x @ sd[name].T

    bsz, seq = input_ids.shape
    x = sd["model.embed_tokens.weight"][input_ids]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    freqs = torch.outer(torch.arange(seq, dtype=torch.float64), inv)
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
    causal = torch.full((seq, seq), float("-inf"), dtype=torch.float64).triu(1)
    for i, block in enumerate(cfg["block_configs"]):
        p = f"model.layers.{i}."
        if not block["attention"]["no_op"]:
            kv_heads = heads // block["attention"]["n_heads_in_group"]
            h = norm(x, sd[p + "input_layernorm.weight"])
            q = lin(h, p + "self_attn.q_proj.weight").view(bsz, seq, heads, hd).transpose(1, 2)
            k = lin(h, p + "self_attn.k_proj.weight").view(bsz, seq, kv_heads, hd).transpose(1, 2)
            v = lin(h, p + "self_attn.v_proj.weight").view(bsz, seq, kv_heads, hd).transpose(1, 2)
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
            k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
            att = torch.softmax(q @ k.transpose(-1, -2) / hd ** 0.5 + causal, -1) @ v
            x = x + lin(att.transpose(1, 2).reshape(bsz, seq, heads * hd), p + "self_attn.o_proj.weight")
        if not block["ffn"]["no_op"]:
            width = int(2 * block["ffn"]["ffn_mult"] * hidden / 3)
            width = width if width % 256 == 0 else width + 256 - width % 256
            assert sd[p + "mlp.gate_proj.weight"].shape[0] == width
            h = norm(x, sd[p + "post_attention_layernorm.weight"])
            g, u = lin(h, p + "mlp.gate_proj.weight"), lin(h, p + "mlp.up_proj.weight")
            x = x + lin(torch.nn.functional.silu(g) * u, p + "mlp.down_proj.weight")
    x = norm(x, sd["model.norm.weight"])
    head = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    return x @ head.T
