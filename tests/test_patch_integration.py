"""Patching beyond the basics: torch.compile, PEFT LoRA, accelerate device maps, and the real SmolLM2-135M."""

from __future__ import annotations

import warnings

import pytest
import torch

from hopscotch import SkipPlan, apply_plan, patch_model, unpatch_model
from hopscotch.hf_compat import output_cache
from hopscotch.patch import kv_cache_bytes, patched_layers, set_skips
from tests.helpers import ROOT
from tests.helpers.model_testing import (LOGIT_TOL, greedy_without_cache, left_padded_batch, needs_peft,
                                         patched_and_original, tiny_model,
                                         zeroed_attention)


def test_patched_model_runs_under_torch_compile():
    model = tiny_model("llama")
    ids = torch.randint(3, 97, (2, 11))
    patch_model(model)
    set_skips(model, attention=[0, 3])
    with torch.no_grad():
        eager = model(ids).logits
        torch._dynamo.reset()
        compiled = torch.compile(model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = compiled(ids).logits
            out2 = compiled(torch.randint(3, 97, (2, 11))).logits
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-4)
    assert out2.shape == out.shape
    # Dynamo names the file of a construct it cannot trace faithfully (an lru_cache wrapper, say); none may be ours.
    ours = [str(w.message) for w in caught if "hopscotch" in str(w.message) or "hf_compat" in str(w.message)]
    assert not ours, ours


@needs_peft
def test_peft_lora_model_patches_skips_and_generates():
    from peft import LoraConfig, get_peft_model

    model = tiny_model("llama")
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "gate_proj"],
                                                  lora_dropout=0.0, init_lora_weights=False))
    peft_model.eval()
    ids, mask = left_padded_batch(97, [7, 5])
    with torch.no_grad(), zeroed_attention(peft_model, [0, 2]):
        ref_logits = peft_model(input_ids=ids, attention_mask=mask).logits
    with torch.no_grad():
        ref_gen = None
        patch_model(peft_model)
        layer = patched_layers(peft_model)[0]
        assert "fused [none]" in layer.extra_repr()  # LoRA-wrapped projections are used as they are
        set_skips(peft_model, attention=[0, 2])
        out = peft_model(input_ids=ids, attention_mask=mask).logits
        gen = peft_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                                  pad_token_id=0)
        ref_gen = greedy_without_cache(peft_model, ids, mask, 8)
    keep = mask.bool()
    torch.testing.assert_close(out[keep], ref_logits[keep], **LOGIT_TOL[torch.float32])
    assert torch.equal(gen, ref_gen)
    unpatch_model(peft_model)


def test_accelerate_device_map_places_scalars_with_their_layer():
    """Dispatched with a device map (only the CPU exists here): the patch follows each layer's device."""
    from accelerate import dispatch_model

    model = tiny_model("llama", num_layers=3)
    ids = torch.randint(3, 97, (1, 8))
    with torch.no_grad():
        ref = model(ids).logits
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu",
                  **{f"model.layers.{i}": "cpu" for i in range(3)}}
    model = dispatch_model(model, device_map=device_map)
    patch_model(model)
    for layer in patched_layers(model):
        assert layer.attn_scale.device == layer.input_layernorm.weight.device
    with torch.no_grad():
        out = model(ids).logits
    torch.testing.assert_close(out, ref, **LOGIT_TOL[torch.float32])


# ---- the real model --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_patched_matches_original_and_generates_the_same_text(smollm2_fresh):
    model, tok = smollm2_fresh
    enc = tok(["The capital of France is", "Water boils at a temperature of"], return_tensors="pt", padding=True,
              padding_side="left")
    ref, out, ref_gen, gen = patched_and_original(model, 32, **enc)
    keep = enc["attention_mask"].bool()
    torch.testing.assert_close(out[keep], ref[keep], rtol=1e-4, atol=2e-4)
    assert torch.equal(gen, ref_gen)
    assert "Paris" in tok.decode(gen[0, enc["input_ids"].shape[1]:])


@pytest.mark.slow
def test_smollm2_skips_match_reference_and_shrink_the_cache(smollm2_fresh):
    model, tok = smollm2_fresh
    L = model.config.num_hidden_layers
    enc = tok(["Photosynthesis is the process by which plants"], return_tensors="pt")
    skips = [0, 7, 19, L - 1]
    with torch.no_grad():
        full_cache = kv_cache_bytes(output_cache(model.generate(**enc, max_new_tokens=16, do_sample=False,
                                                                return_dict_in_generate=True)))
        with zeroed_attention(model, skips):
            ref = model(**enc).logits
            ref_gen = greedy_without_cache(model, enc["input_ids"], enc["attention_mask"], 16,
                                           eos_id=tok.eos_token_id)
        apply_plan(model, SkipPlan.for_model(model, skips))
        out = model(**enc).logits
        res = model.generate(**enc, max_new_tokens=16, do_sample=False, return_dict_in_generate=True)
    # float32 through 30 layers, summed in another order than HF's: logits (magnitude ~20) agree to ~1e-3.
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-3)
    assert torch.equal(res.sequences, ref_gen)
    assert kv_cache_bytes(output_cache(res)) * L == full_cache * (L - len(skips))


def test_patched_model_without_the_compiled_kernels(tmp_path):
    """With the pure-torch references standing in (HOPSCOTCH_DISABLE_EXTENSION=1), patching still keeps ARCHITECTURE.md §2.1
    and compiles."""
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        import hopscotch_ext
        assert not hopscotch_ext.info()["loaded"]
        from tests.helpers.model_testing import tiny_model
        from hopscotch import patch_model
        from hopscotch.patch import set_skips
        model = tiny_model("qwen3")
        ids = torch.randint(3, 97, (2, 9))
        with torch.no_grad():
            ref = model(ids).logits
            patch_model(model)
            torch.testing.assert_close(model(ids).logits, ref, rtol=1e-4, atol=1e-4)
            set_skips(model, attention=[0])
            eager = model(ids).logits
            torch._dynamo.reset()
            torch.testing.assert_close(torch.compile(model)(ids).logits, eager, rtol=1e-4, atol=1e-4)
        print("ok")
    """)
    env = {**os.environ, "HOPSCOTCH_DISABLE_EXTENSION": "1"}
    proc = subprocess.run([sys.executable, "-W", "ignore::RuntimeWarning", "-c", code], capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
