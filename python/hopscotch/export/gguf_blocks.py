"""GGML block quantisation: a tensor's stored blocks scaled by a factor, and a quantised GGUF's own tensors.

GGML's block formats store, beside each block's integer codes, one or two float16 numbers that every value of
the block is linear in: the scale ``d`` (and, in the "_1" and K formats, the minimum ``m`` / ``dmin``), e.g.
``x = d * q + m`` for Q4_1. Multiplying the whole tensor by a factor ``f`` is therefore ``d -> f d`` and
``m -> f m`` with the codes untouched: exact up to the float16 rounding of the new ``d`` and ``m`` (a relative
error of at most 2^-11 per block), and no requantisation. That is how a plan's output-projection factors
(``fold.output_scales``) fold into a quantised model: ``format="gguf"`` with ``dtype="source"`` copies each
tensor of the GGUF file the model was loaded from, block for block, and scales the blocks of attn_output /
ffn_down (``scale_blocks``).

``SCALE_FIELDS`` gives, per block type, the byte offsets of those float16 fields in one block (GGML's
``block_q4_0`` ... ``block_q6_K`` structs); tests/test_export_gguf_quant.py checks every entry against the
``gguf`` package's own dequantisation (a factor of 2 must double every dequantised value exactly). Types whose
values are not linear in float16 fields alone (the IQ and ternary types, MXFP4) are refused.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["FLOAT_TYPES", "SCALE_FIELDS", "QuantFoldError", "check_source_tensor", "dequantize", "scale_blocks"]

# block type name -> byte offsets of the float16 fields every value of the block is linear in
SCALE_FIELDS = {
    "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
    "Q2_K": (80, 82),   # scales[16] qs[64] d dmin
    "Q3_K": (108,),     # hmask[32] qs[64] scales[12] d
    "Q4_K": (0, 2),     # d dmin scales[12] qs[128]
    "Q5_K": (0, 2),     # d dmin scales[12] qh[32] qs[128]
    "Q6_K": (208,),     # ql[128] qh[64] scales[16] d
}
FLOAT_TYPES = ("F32", "F16", "BF16")


class QuantFoldError(ValueError):
    """A tensor's block type cannot take a folded factor, or the source file does not hold the model's weights."""


def _type_name(qtype) -> str:
    return getattr(qtype, "name", str(qtype))


def scale_blocks(raw: np.ndarray, qtype, factor: float) -> np.ndarray:
    """A copy of one tensor's stored data (as ``GGUFReader`` gives it: uint8 rows of blocks for a block type,
    the values for F32 / F16) with every value multiplied by ``factor``; block codes are kept, their float16
    scale fields are scaled (``SCALE_FIELDS``)."""
    import gguf

    name = _type_name(qtype)
    if name == "F32":
        return (raw.astype(np.float64) * factor).astype(np.float32)
    if name == "F16":
        return (raw.astype(np.float64) * factor).astype(np.float16)
    if name not in SCALE_FIELDS:
        raise QuantFoldError(f"GGML type {name} cannot take a folded scalar without requantising (supported: "
                             f"{', '.join(FLOAT_TYPES[:2] + tuple(SCALE_FIELDS))})")
    block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]][1]
    out = np.ascontiguousarray(raw, dtype=np.uint8).copy()
    blocks = out.reshape(-1, block_bytes)
    for offset in SCALE_FIELDS[name]:
        field = blocks[:, offset:offset + 2].copy().view(np.float16)  # [n_blocks, 1]
        scaled = (field.astype(np.float64) * factor).astype(np.float16)
        if not np.isfinite(scaled).all():
            raise QuantFoldError(f"a factor of {factor:.6g} overflows a float16 block scale of this {name} tensor")
        blocks[:, offset:offset + 2] = scaled.view(np.uint8)
    return out


def dequantize(tensor) -> np.ndarray:
    """One ``GGUFReader`` tensor as float32, shaped as transformers' weight (rows = output features)."""
    import gguf

    data = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
    return np.array(data, dtype=np.float32).reshape(tuple(int(n) for n in reversed(tensor.shape)))


def check_source_tensor(name: str, tensor, expected: torch.Tensor) -> None:
    """Refuse when the source file's tensor is not the weight the model holds (``expected``, in llama.cpp's row
    order and the model's dtype): ``dtype="source"`` copies the file's blocks, so they must be the model's
    weights, bit for bit once rounded to the model's dtype."""
    have = torch.from_numpy(dequantize(tensor))
    if tuple(have.shape) != tuple(expected.shape):
        raise QuantFoldError(f"{name}: the source GGUF's tensor has shape {tuple(have.shape)}, the model's "
                             f"{tuple(expected.shape)}: the model was not loaded from this file")
    have = have.to(expected.dtype)
    if not torch.equal(have, expected):
        diff = float((have.float() - expected.float()).abs().max())
        raise QuantFoldError(
            f"{name}: the model's weights differ from the source GGUF's ({_type_name(tensor.tensor_type)}) by up to "
            f"{diff:.3g}: dtype='source' copies the file's quantised blocks, so the model must hold exactly the "
            "weights it was loaded with from that file. Export with dtype='f16' / 'q8_0' / 'q4_0' instead, which "
            "quantise the folded weights anew")
