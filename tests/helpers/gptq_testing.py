"""GPTQ checkpoints made here, without a GPTQ library: round-to-nearest 4-bit codes in GPTQ's (format v1) packing.

qweight [in/8, out] and qzeros [groups, out/8] int32, eight 4-bit values to a word; scales [groups, out] float16;
g_idx [in] (no act-order). Format v1 stores the zero point minus one. Asymmetric (``sym=False``: each group's own
zero point, as tests/test_export_gptq.py folds) or symmetric (``sym=True``: zero point 8, scale max|w| / 7, the
only kind vLLM's CPU GPTQ path accepts). Not GPTQ's error-compensating rounding: the format, not the algorithm,
is what the fold and the engines read.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")
SHIFTS = torch.arange(8) * 4


def as_int32(x: torch.Tensor) -> torch.Tensor:
    return ((x + 2**31) % 2**32 - 2**31).to(torch.int32)  # the packed bits, as int32 stores them


def pack(weight: torch.Tensor, group: int, sym: bool = False) -> dict[str, torch.Tensor]:
    """GPTQ (format v1) tensors of ``weight`` [out, in]: 4-bit round-to-nearest per input group of ``group``."""
    out_f, in_f = weight.shape
    w = weight.double().T.reshape(in_f // group, group, out_f)
    if sym:
        scales = (w.abs().amax(1) / 7).clamp(min=1e-6).half()
        zeros = torch.full_like(scales, 8, dtype=torch.float64)
    else:
        lo, hi = w.amin(1), w.amax(1)
        scales = ((hi - lo) / 15).clamp(min=1e-4).half()
        zeros = (-lo / scales.double()).round().clamp(0, 15)
    q = (w / scales.double()[:, None] + zeros[:, None]).round().clamp(0, 15).to(torch.int64).reshape(in_f, out_f)
    qweight = (q.reshape(in_f // 8, 8, out_f) << SHIFTS[None, :, None]).sum(1)
    z = (zeros.to(torch.int64) - 1).reshape(-1, out_f // 8, 8)  # v1 stores zero - 1
    qzeros = ((z & 0xF) << SHIFTS[None, None, :]).sum(-1)
    return {"qweight": as_int32(qweight), "qzeros": as_int32(qzeros), "scales": scales,
            "g_idx": (torch.arange(in_f) // group).to(torch.int32)}


def unpack(t: dict[str, torch.Tensor]) -> torch.Tensor:
    """The float64 weight [out, in] of GPTQ tensors ``t`` (this file's reader)."""
    qweight, qzeros = t["qweight"].to(torch.int64), t["qzeros"].to(torch.int64)
    q = ((qweight[:, None, :] >> SHIFTS[None, :, None]) & 0xF).reshape(-1, qweight.shape[1])
    z = (((qzeros[:, :, None] >> SHIFTS[None, None, :]) & 0xF) + 1).reshape(qzeros.shape[0], -1)
    g = t["g_idx"].long()
    return (t["scales"].double()[g] * (q - z[g]).double()).T


def write_checkpoint(model, path: Path, group: int, *, sym: bool = False,
                     method: str = "gptq") -> dict[str, torch.Tensor]:
    """A GPTQ checkpoint of ``model`` at ``path`` (made; a tied lm_head is left to the embedding, as safetensors
    wants); returns the dequantized weights by HF name."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir()
    sd, dequant = {}, {}
    tied = getattr(model.config, "tie_word_embeddings", False)
    for name, t in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        module = name.rsplit(".", 1)[0]
        if module.endswith(LINEARS) and name.endswith(".weight"):
            packed = pack(t, group, sym)
            sd.update({f"{module}.{k}": v for k, v in packed.items()})
            dequant[name] = unpack(packed).float()
        else:
            sd[name] = t.contiguous()
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    cfg["quantization_config"] = {"quant_method": method, "bits": 4, "group_size": group, "desc_act": False,
                                  "sym": sym, "checkpoint_format": "gptq"}
    (path / "config.json").write_text(json.dumps(cfg))
    return dequant
