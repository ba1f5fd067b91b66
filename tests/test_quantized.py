"""Quantized models in: patch, skip, generate and search on models quantized by real libraries (torchao,
bitsandbytes), on tiny random Llamas, and on the packaged SmolLM2 (slow).

For each scheme: the patched model with nothing skipped equals the unpatched quantized model (logits, greedy
tokens); cached generation equals recomputation with blocks skipped; the quantized projections stay what they
were (no fused full-precision copy: ``FusedLinear`` is not built over them, the weights keep their class and
storage) and are called as modules; norms, rotary and the own KV cache still run on hopscotch's ops.

Tolerances: weight-only schemes compute every matmul in the activations' dtype, so the patched model is as close
to the unpatched one as in float32 (``LOGIT_TOL``). Schemes that quantize the activations too (bitsandbytes NF4
on CPU, torchao's dynamic int8) turn a one-ulp difference in a norm's output into a different rounding of a whole
row: measured on these models, up to 0.04 on logits of magnitude ~3, so they get ``ACT_QUANT_TOL``, and their
greedy tokens are compared on the real model only (random tiny weights have near-ties that such a difference
flips, as in test_patch's low-precision dtypes). bitsandbytes' LLM.int8 quantizes activations too, but these tiny
models' stay within ``LOGIT_TOL``; on SmolLM2 with a 128-token prompt it does not (4.6, against 3.4 for the
unpatched model with its embeddings scaled by 1 + 2^-22: benchmarks/bench_quantized.py, docs/QUANTIZATION.md).

The libraries are optional: each scheme skips, saying which package is missing, unless HOPSCOTCH_REQUIRE_QUANT=1
(CI), where a missing package fails.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from hopscotch import patch_model
from hopscotch.patch import patched_layers, set_skips
from tests.helpers.model_testing import (LOGIT_TOL, greedy_without_cache, left_padded_batch, patched_and_original,
                                         tiny_model)

ACT_QUANT_TOL = dict(rtol=0.05, atol=0.1)


def _need(package: str):
    if importlib.util.find_spec(package) is None:
        if os.environ.get("HOPSCOTCH_REQUIRE_QUANT") == "1":
            pytest.fail(f"HOPSCOTCH_REQUIRE_QUANT=1 but {package} is not installed")
        pytest.skip(f"{package} is not installed (pip install {package})")


def _torchao(config_name: str, **kwargs):
    def quantize(model):
        _need("torchao")
        import torchao.quantization as q

        args = {k: q.PerGroup(v) if k == "granularity" else v for k, v in kwargs.items()}
        q.quantize_(model, getattr(q, config_name)(**args))
        return model
    return quantize


def _bnb(bits: int):
    def quantize(model, tmp_path):
        _need("bitsandbytes")
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        model.save_pretrained(tmp_path / "fp")
        cfg = (BitsAndBytesConfig(load_in_8bit=True) if bits == 8 else
               BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32))
        return AutoModelForCausalLM.from_pretrained(tmp_path / "fp", quantization_config=cfg, dtype=torch.float32,
                                                    device_map="cpu", attn_implementation="sdpa").eval()
    return quantize


# name -> (quantize(model[, tmp_path]), logit tolerance, what a quantized q_proj is)
SCHEMES = {
    "torchao-int8-weight-only": (_torchao("Int8WeightOnlyConfig"), LOGIT_TOL[torch.float32], "Int8Tensor"),
    "torchao-int4-weight-only": (_torchao("IntxWeightOnlyConfig", weight_dtype=torch.int4, granularity=32),
                                 LOGIT_TOL[torch.float32], "IntxUnpackedToInt8Tensor"),
    "torchao-int8-dynamic": (_torchao("Int8DynamicActivationInt8WeightConfig"), ACT_QUANT_TOL, "Int8Tensor"),
    "bnb-int8": (_bnb(8), LOGIT_TOL[torch.float32], "Linear8bitLt"),
    "bnb-nf4": (_bnb(4), ACT_QUANT_TOL, "Linear4bit"),
}


def _quantized(name, tmp_path, **overrides):
    quantize = SCHEMES[name][0]
    model = tiny_model("llama", intermediate_size=128, **overrides)  # rows a multiple of 32 (int4 groups)
    return quantize(model, tmp_path) if name.startswith("bnb") else quantize(model)


def _kind(proj) -> str:
    """What a quantized projection is: its weight's class for torchao (still an nn.Linear), else the module's."""
    return type(proj.weight).__name__ if type(proj) is torch.nn.Linear else type(proj).__name__


def _ids(batch=2, seq=13, seed=0):
    return torch.randint(3, 97, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(SCHEMES))
def test_patched_quantized_model_equals_the_unpatched_one(name, tmp_path, one_thread):
    model = _quantized(name, tmp_path)
    q = model.model.layers[0].self_attn.q_proj
    assert _kind(q) == SCHEMES[name][2]
    ids = _ids()
    with torch.no_grad():
        model(ids)  # bitsandbytes' CPU backend repacks 4-bit weights on their first use
    weights = {n: (type(p), p.data_ptr()) for n, p in model.named_parameters()}
    ref, out, ref_gen, gen = patched_and_original(model, 16, input_ids=ids, attention_mask=torch.ones_like(ids))
    torch.testing.assert_close(out, ref, **SCHEMES[name][1])
    if SCHEMES[name][1] is not ACT_QUANT_TOL:
        assert torch.equal(gen, ref_gen)
    for layer in patched_layers(model):  # called as modules: nothing fused, nothing copied or rebound
        assert layer._qkv is None and layer._gate_up is None
    assert {n: (type(p), p.data_ptr()) for n, p in model.named_parameters() if "_scale" not in n} == weights


@pytest.mark.parametrize("name", ["torchao-int8-weight-only", "torchao-int4-weight-only", "bnb-int8"])
def test_quantized_cached_generation_equals_recomputation_with_skips(name, tmp_path, one_thread):
    model = _quantized(name, tmp_path)
    patch_model(model)
    set_skips(model, attention=[0, 3])
    ids, mask = left_padded_batch(97, [9, 4, 12])
    with torch.no_grad():
        got = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                             pad_token_id=0, eos_token_id=1)
        ref = greedy_without_cache(model, ids, mask, 10)
    assert torch.equal(got, ref)


def test_quantized_model_runs_the_kernels_path_and_a_compact_cache(tmp_path, one_thread):
    """Norms, rotary and the cache write go through hopscotch's ops; the cache holds only the kept blocks, in the
    activations' dtype (not the int8 weights')."""
    from hopscotch.doctor import OpCounter
    from hopscotch.hf_compat import cache_kwargs
    from hopscotch.patch import HopscotchCache

    model = _quantized("bnb-int8", tmp_path)
    patch_model(model)
    set_skips(model, attention=[1, 2])
    cache = HopscotchCache()
    with OpCounter() as counter, torch.no_grad():
        model(_ids(), **cache_kwargs(cache), use_cache=True)
    ops = {op.removeprefix("hopscotch_ext::").split(".")[0].rstrip("_") for op in counter.hopscotch_ops()}
    assert {"scaled_add_rms_norm", "rotary_embedding_kv_cache"} <= ops, ops
    assert len(cache.layers) == 3 and all(b.key_buffer.dtype == torch.float32 for b in cache.layers)


def test_quantized_search_runs(tmp_path, one_thread):
    """A short hopscotch-fast search on a torchao int8 model: the scalars train through the quantized modules."""
    from hopscotch.search import search
    from tests.helpers.model_testing import calibration_batches

    model = _quantized("torchao-int8-weight-only", tmp_path)
    plan = search(model, calibration_batches(n=4), method="hopscotch", num_skip=1, generic_weight=0.0,
                  final_epochs=1, state_path=tmp_path / "s.json")
    assert len(plan.skipped_attention) == 1
    assert type(model.model.layers[0].self_attn.q_proj.weight).__name__ == "Int8Tensor"


def test_cli_searches_a_saved_quantized_model(tiny_dir, tmp_path, one_thread):
    """`hopscotch search --model DIR` on a torchao-quantized checkpoint (transformers' TorchAoConfig, saved)."""
    _need("torchao")
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TorchAoConfig

    from hopscotch.cli import main

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, quantization_config=TorchAoConfig(Int8WeightOnlyConfig()))
    model.save_pretrained(tmp_path / "q")
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(tmp_path / "q")
    assert main(["search", "--model", str(tmp_path / "q"), "--task", "wikipedia", "--num-skip", "1",
                 "--calibration", "4", "--evaluation", "4", "--out", str(tmp_path / "plan.json"), "--quiet"]) == 0
    assert (tmp_path / "plan.json").is_file()


@pytest.mark.slow
def test_smollm2_int8_patched_equals_unpatched_and_a_search_runs(smollm2_fresh, tmp_path):
    """The real model under torchao's int8 weight-only scheme: same logits and greedy tokens patched and not, and
    a short hopscotch-fast search on its quantized weights."""
    _need("torchao")
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    from hopscotch.search import search

    model, tok = smollm2_fresh
    quantize_(model, Int8WeightOnlyConfig())
    enc = tok(["The capital of France is", "Water boils at"], return_tensors="pt", padding=True,
              padding_side="left")
    ref, out, ref_gen, gen = patched_and_original(model, 16, **enc)
    keep = enc["attention_mask"].bool()
    torch.testing.assert_close(out[keep], ref[keep], **LOGIT_TOL[torch.float32])
    assert torch.equal(gen, ref_gen)
    texts = ["Paris is the capital and largest city of France.", "The Nile is a river in northeast Africa.",
             "Photosynthesis turns light into chemical energy.", "The piano is a keyboard instrument."]
    batches = []
    for i in range(0, 4, 2):
        b = tok(texts[i:i + 2], return_tensors="pt", padding=True)
        b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
        batches.append(dict(b))
    plan = search(model, batches, method="hopscotch-fast", num_skip=1, generic_weight=0.0, final_epochs=1,
                  state_path=tmp_path / "s.json")
    assert len(plan.skipped_attention) == 1
    assert type(model.model.layers[0].self_attn.q_proj.weight).__name__ == "Int8Tensor"


def test_a_quantized_kv_cache_is_adapted(one_thread):
    """generate(cache_implementation="quantized") (transformers' QuantizedCache, optimum-quanto backend): with
    nothing skipped the patched model generates the unpatched model's tokens; with blocks skipped the cache holds
    one layer per kept block. (Its keys are quantized, so cached generation is not recomputation, unpatched too.)"""
    _need("optimum.quanto")
    from hopscotch.hf_compat import output_cache

    model = tiny_model("llama")
    ids, mask = left_padded_batch(97, [8, 5])
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0, cache_implementation="quantized",
              return_dict_in_generate=True)
    with torch.no_grad():
        ref = model.generate(ids, **kw)
        patch_model(model)
        same = model.generate(ids, **kw)
        set_skips(model, attention=[0, 2])
        thin = model.generate(ids, **kw)
    assert type(output_cache(same)).__name__ == "QuantizedCache"
    assert torch.equal(same.sequences, ref.sequences)
    cache = output_cache(thin)
    assert len(cache.layers) == model.config.num_hidden_layers - 2
    assert cache.get_seq_length() == ids.shape[1] + 5
