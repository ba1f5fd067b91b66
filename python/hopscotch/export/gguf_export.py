"""``format="gguf"``: llama.cpp's DeciLM architecture ("deci"), written directly with the ``gguf`` package.

llama.cpp's deci model reads per-layer arrays ``deci.attention.head_count`` / ``head_count_kv`` /
``feed_forward_length``; a layer with 0 heads is attention-free (``cur = inpL``: no norm, no projections, no KV
cache), so a skipped attention block is written as 0 heads and none of its tensors. Tensor names are llama.cpp's
(``blk.N.attn_q.weight`` ...). Like llama.cpp's own converter for this architecture, q_proj / k_proj rows are
permuted per head: transformers rotates the two halves of a head, llama.cpp's "normal" RoPE rotates adjacent
pairs. The scalars are folded into attn_output / ffn_down as in every other format (``fold.py``).

What llama.cpp's deci graph cannot express is refused (``formats.gguf_problems``): biases, q/k norms, sliding
windows, non-default RoPE, a skipped MLP block whose attention is kept or in the last layer (llama.cpp's graph
``continue``s before carrying the layer's output forward: only a fully skipped inner layer comes out right) and a
skipped attention block 0 (llama.cpp takes the head size from layer 0's head count: it refuses to load such a
file). The tokenizer and chat template are GGUF metadata copied from a GGUF file (the packaged model's own, or
``gguf_tokenizer``: the GGUF file the model was loaded from); an HF tokenizer is not converted (llama.cpp's
convert_hf_to_gguf.py does that, on a ``format="decilm"`` export).

Weight types (``dtype``):
- f32, f16, bf16 (1-D tensors stay f32), and q8_0, q4_0, q4_1, q5_0, q5_1: the folded weights quantised anew by
  the ``gguf`` package (2-D tensors whose rows are a multiple of 32; others f16). Other types (the K quants):
  llama.cpp's quantizer on the f16 or f32 file (``llama-quantize in.gguf out.gguf Q4_K_M``, or
  ``llama_cpp.llama_model_quantize`` from Python).
- ``source``: for a model loaded from a quantised GGUF file (the packaged SmolLM2, Q4_1 with a Q8_0 embedding,
  or ``--model model.gguf``), every tensor keeps that file's type and blocks, and the scalars fold into the
  blocks' float16 scales (``gguf_blocks.scale_blocks``): nothing is requantised, and the thin file's weights are
  the searched model's up to the float16 rounding of the scaled block scales. The model must hold exactly the
  weights it was loaded with (checked tensor by tensor).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..arch import causal_lm, check_supported
from ..atomic import check_destination, clean_stale_partials, partial_path
from ..packaged import converted_model_dir, smollm2_gguf_path
from ..paths import PathError, check_input
from ..plan import SkipPlan
from ..utils import model_dtype
from .checks import foreign_gguf, export_inputs
from .fold import folded_weights, output_scales, weight_factor
from .gguf_blocks import QuantFoldError, check_source_tensor, scale_blocks
from .formats import ExportError, check_format, rope_settings, warn_single_eps

__all__ = ["GGUF_DTYPES", "export_gguf", "tokenizer_source"]

ARCH = "deci"
# name -> (GGML type of 2-D tensors, llama.cpp file type)
GGUF_DTYPES = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"),
               "q8_0": ("Q8_0", "MOSTLY_Q8_0"), "q4_0": ("Q4_0", "MOSTLY_Q4_0"), "q4_1": ("Q4_1", "MOSTLY_Q4_1"),
               "q5_0": ("Q5_0", "MOSTLY_Q5_0"), "q5_1": ("Q5_1", "MOSTLY_Q5_1"), "source": (None, None)}
_ALIASES = {"float32": "f32", "fp32": "f32", "float16": "f16", "fp16": "f16", "half": "f16", "bfloat16": "bf16"}
_TOKENIZER_PREFIX = "tokenizer."
_GENERAL_KEEP = ("general.name", "general.organization", "general.basename", "general.finetune",
                 "general.size_label", "general.license", "general.languages")


def _gguf_dtype(dtype, loaded: torch.dtype) -> str:
    if dtype is None:
        dtype = loaded
    name = str(dtype).removeprefix("torch.").lower()
    name = _ALIASES.get(name, name)
    if name not in GGUF_DTYPES:
        raise ExportError(f"dtype {dtype!r} cannot be written to gguf; expected one of {', '.join(GGUF_DTYPES)} "
                          "(other llama.cpp types: run llama-quantize on the f16 or f32 file; 'source' keeps the "
                          "types of the GGUF file the model was loaded from)")
    return name


def tokenizer_source(model, gguf_tokenizer=None) -> Path:
    """The GGUF file whose tokenizer metadata the export carries (and, for ``dtype="source"``, whose blocks):
    ``gguf_tokenizer``, else the packaged SmolLM2's when ``model`` was loaded from it; refuses otherwise."""
    if gguf_tokenizer is not None:
        try:
            return check_input(gguf_tokenizer, "gguf_tokenizer", expected="the GGUF file the model was loaded from",
                               suffixes=(".gguf",))
        except PathError as exc:
            raise ExportError(str(exc)) from None
    loaded_from = getattr(causal_lm(model).config, "_name_or_path", "") or ""
    if loaded_from and Path(loaded_from).resolve() == converted_model_dir().resolve():
        return smollm2_gguf_path()
    raise ExportError(
        "format='gguf' carries the tokenizer over from a GGUF file, and this model was not loaded from the packaged "
        f"one (loaded from {loaded_from or 'an unknown place'!r}): pass gguf_tokenizer='model.gguf' (hopscotch "
        "export --model model.gguf does it). An HF tokenizer is not converted here: export format='decilm' and run "
        "llama.cpp's convert_hf_to_gguf.py on it instead")


def _copy_field(writer, reader, key: str) -> None:
    import gguf

    field = reader.fields[key]
    vtype = field.types[0]
    if vtype == gguf.GGUFValueType.ARRAY:
        sub = field.types[-1]
        if len(field.types) != 2:
            raise ExportError(f"{key}: nested GGUF arrays are not copied")
        if sub == gguf.GGUFValueType.STRING:  # raw bytes: byte-level tokens need not be valid UTF-8
            value = [bytes(field.parts[i]) for i in field.data]
        else:
            value = [field.parts[i].tolist()[0] for i in field.data]
        writer.add_key_value(key, value, vtype, sub_type=sub)
    elif vtype == gguf.GGUFValueType.STRING:
        writer.add_key_value(key, bytes(field.parts[field.data[0]]), vtype)
    else:
        writer.add_key_value(key, field.parts[field.data[0]].tolist()[0], vtype)


def _permute_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Per head, rows [x0..x(d/2-1), y0..y(d/2-1)] (rotate-half RoPE) -> [x0, y0, x1, y1, ...] (adjacent pairs)."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def export_gguf(model, plan: SkipPlan, out: str | os.PathLike, *, dtype=None, overwrite: bool = False,
                gguf_tokenizer=None) -> Path:
    """Write ``model`` with ``plan`` to one llama.cpp GGUF file ``out`` (``*.gguf``); returns its path."""
    import gguf

    out = Path(out)
    if out.suffix != ".gguf":
        raise ExportError(f"format='gguf' writes one file: {out} should end in .gguf")
    check_destination(out, overwrite=overwrite, inputs=export_inputs(model, plan, None, gguf_tokenizer),
                      foreign=foreign_gguf, name="out", file=True, error=ExportError)
    check_supported(model)
    plan.validate(model)
    lm = causal_lm(model)
    config = lm.config
    check_format("gguf", config, plan)
    weight_dtype, file_type = GGUF_DTYPES[_gguf_dtype(dtype, model_dtype(lm))]
    src_path = tokenizer_source(model, gguf_tokenizer)
    src = gguf.GGUFReader(src_path)
    n_vocab_src = len(src.fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in src.fields else None
    if n_vocab_src != config.vocab_size:
        raise ExportError(f"{src_path} has {n_vocab_src} tokenizer tokens, the model {config.vocab_size}: not "
                          "this model's tokenizer")

    n_layers, n_heads, n_kv = config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    rope_theta, _ = rope_settings(config)
    tensors, fold = folded_weights(model, plan)
    warn_single_eps(plan, "gguf")
    from_source = weight_dtype is None
    src_tensors = {t.name: t for t in src.tensors} if from_source else None
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.DECI, n_layers)

    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(out)  # of killed exports to the same file
    tmp = partial_path(out, unique=True)
    writer = gguf.GGUFWriter(tmp, ARCH)
    try:
        for key in _GENERAL_KEEP:
            if key in src.fields:
                _copy_field(writer, src, key)
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_block_count(n_layers)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_feed_forward_length([0 if i in plan.skipped_mlp else config.intermediate_size
                                        for i in range(n_layers)])
        writer.add_head_count([0 if i in plan.skipped_attention else n_heads for i in range(n_layers)])
        writer.add_head_count_kv([0 if i in plan.skipped_attention else n_kv for i in range(n_layers)])
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(rope_theta)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_vocab_size(config.vocab_size)
        if from_source:
            if "general.file_type" in src.fields:
                _copy_field(writer, src, "general.file_type")
        else:
            writer.add_file_type(int(getattr(gguf.LlamaFileType, file_type)))
        if weight_dtype not in ("F32", "F16", "BF16"):
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_string("hopscotch.skipped_attention", json.dumps(plan.skipped_attention))  # no empty GGUF arrays
        writer.add_string("hopscotch.method", str(plan.provenance.get("method")))
        writer.add_string("hopscotch.fingerprint", str(plan.fingerprint["config_hash"]))
        for key in src.fields:
            if key.startswith(_TOKENIZER_PREFIX):
                _copy_field(writer, src, key)

        plans = []  # (gguf name, HF name, ggml type, logical shape)
        for hf_name, t in tensors.items():
            name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise ExportError(f"no llama.cpp tensor name for {hf_name}")
            if from_source:
                if name not in src_tensors:
                    raise ExportError(f"dtype='source': {src_path} has no tensor {name} ({hf_name})")
                qtype = src_tensors[name].tensor_type
            else:
                qtype = gguf.GGMLQuantizationType[weight_dtype] if t.dim() == 2 else gguf.GGMLQuantizationType.F32
                block = gguf.GGML_QUANT_SIZES[qtype][0]
                if t.shape[-1] % block:
                    qtype = gguf.GGMLQuantizationType.F16  # what llama.cpp's converter falls back to
            plans.append((name, hf_name, qtype, tuple(t.shape)))
        for name, _, qtype, shape in plans:  # the header first, then the tensors one at a time (streamed)
            block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
            writer.add_tensor_info(name, shape, np.dtype(np.float32), int(np.prod(shape)) // block * block_bytes,
                                   raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        heads = {"attn_q.weight": n_heads, "attn_k.weight": n_kv}
        scales = output_scales(plan.scalar_tensor(), plan.skipped_attention, plan.skipped_mlp)
        for name, hf_name, qtype, _ in plans:
            permute = next((n for suffix, n in heads.items() if name.endswith(suffix)), None)
            if from_source:
                factor = weight_factor(hf_name, plan, scales)
                data = _source_data(name, tensors[hf_name], src_tensors[name], permute, factor)
            else:
                t = fold(hf_name, torch.float32)
                if permute is not None:
                    t = _permute_rows(t, permute)
                data = gguf.quants.quantize(t.numpy(), qtype)
            writer.write_tensor_data(data)
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


def _source_data(name: str, weight: torch.Tensor, src, permute: int | None, factor: float | None) -> np.ndarray:
    """The source file's stored data for one tensor, its blocks scaled by the plan's ``factor`` (dtype='source'),
    after checking that they hold exactly the model's weight."""
    expected = weight.detach().to("cpu")
    if permute is not None:
        expected = _permute_rows(expected, permute)
    try:
        check_source_tensor(name, src, expected)
        raw = np.asarray(src.data)
        return raw.copy() if factor in (None, 1.0) else scale_blocks(raw, src.tensor_type, factor)
    except QuantFoldError as exc:
        raise ExportError(str(exc)) from None
