"""The patched model against the installed transformers: every keyword argument HF's own generate() passes is
accepted and honoured; anything else is refused, never dropped; `hopscotch doctor` passes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import transformers

import hopscotch_ext
from hopscotch import patch_model, unpatch_model
from hopscotch.arch import base_model
from hopscotch.doctor import OpCounter, run_checks
from hopscotch.hf_compat import (CACHE_NAMES, INTERNALS, UnsupportedKeywordError, cache_kwarg_name, cache_kwargs,
                                 output_cache, pop_cache)
from hopscotch.patch import set_skips
from tests.helpers.model_testing import ARCHS, greedy_without_cache, left_padded_batch, tiny_model
from tests.helpers.op_testing import needs_extension


def _record_forward_kwargs(model) -> list[dict]:
    """Wrap the decoder stack's forward (instance level, as the patch does) and record each call's kwargs."""
    base = base_model(model)
    inner = base.forward
    calls: list[dict] = []

    def recording(*args, **kwargs):
        assert not args, f"generate() passed positional arguments to the decoder stack: {args!r}"
        calls.append(dict(kwargs))
        return inner(**kwargs)

    base.forward = recording
    return calls


@pytest.mark.parametrize("arch", ARCHS)
def test_the_patched_model_honours_every_keyword_generate_passes(arch):
    ids, mask = left_padded_batch(97, [9, 5])
    gen_kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    model = tiny_model(arch)
    with torch.no_grad():
        calls = _record_forward_kwargs(model)
        reference = model.generate(**gen_kw)
        del base_model(model).forward
    assert len(calls) == 6  # prefill + 5 decode steps
    names = set().union(*calls)
    # The cache travels under the installed version's own name, and the patched model reads that name.
    assert cache_kwarg_name() in names, f"transformers {transformers.__version__} passed {sorted(names)}"

    patch_model(model)
    with torch.no_grad():
        patched_calls = _record_forward_kwargs(model)
        out = model.generate(**gen_kw)
    # Same keywords reach the patched forward, and the generation is the original's (which needs every one of
    # them: the mask for the padding, positions, the cache for each decode step, use_cache).
    assert [set(c) for c in patched_calls] == [set(c) for c in calls]
    assert torch.equal(out, reference)
    # The cache is honoured, not rebuilt at each step: cached == recomputed without any cache.
    with torch.no_grad():
        assert torch.equal(out, greedy_without_cache(model, ids, mask, 6, eos_id=1, pad_id=0))


def test_cached_generation_with_a_skipped_block_zero_matches_uncached():
    model = tiny_model("llama")
    ids, mask = left_padded_batch(97, [8, 4])
    patch_model(model)
    set_skips(model, attention=[0, 3])
    with torch.no_grad():
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0,
                             return_dict_in_generate=True)
        ref = greedy_without_cache(model, ids, mask, 10, eos_id=1, pad_id=0)
    assert torch.equal(gen.sequences, ref)
    assert len(output_cache(gen).layers) == 3


@pytest.mark.parametrize("kwargs, pattern", [
    ({"cu_seq_lens_q": torch.tensor([0, 3])}, "cu_seq_lens_q=.*not supported"),
    ({"brand_new_argument": 1}, r"brand_new_argument= \(transformers [0-9.]+\).*refusing it rather than ignoring"),
    ({"output_attentions": True}, "output_attentions=True .*per-layer attentions"),
    ({"is_causal": False}, "is_causal=False .*causal only"),
])
def test_keywords_the_patch_cannot_honour_are_refused(kwargs, pattern):
    model = tiny_model("llama")
    patch_model(model)
    with pytest.raises(UnsupportedKeywordError, match=pattern), torch.no_grad():
        model(torch.tensor([[5, 6, 7]]), **kwargs)


def test_harmless_keywords_are_accepted():
    model = tiny_model("qwen3")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        ref = model(ids).logits
        patch_model(model)
        out = model(ids, output_attentions=False, output_hidden_states=None, is_causal=True,
                    num_items_in_batch=torch.tensor(4)).logits
        tup = base_model(model)(input_ids=ids, return_dict=False)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert isinstance(tup, tuple)


def test_the_cache_under_both_names_and_not_twice():
    from transformers.cache_utils import DynamicCache

    assert set(cache_kwargs(None)) == {cache_kwarg_name()} and cache_kwarg_name() in CACHE_NAMES
    c = DynamicCache()
    kw = {"past_key_values": c}
    assert pop_cache(kw) is c and kw == {}
    kw = {"cache": c}
    assert pop_cache(kw) is c and kw == {}
    with pytest.raises(UnsupportedKeywordError, match="pass the cache once"):
        pop_cache({"cache": c, "past_key_values": DynamicCache()})


def test_unpatch_restores_hf_forward_with_its_own_keywords():
    model = tiny_model("mistral")
    ids = torch.tensor([[5, 6, 7, 8]])
    patch_model(model)
    unpatch_model(model)
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
    assert len(hs) == model.config.num_hidden_layers + 1


def test_doctor_checks_pass_here():
    """Every check passes; without the compiled extension (the reference fallback) every check but "compiled
    kernels ran" passes, and that one fails saying so."""
    results = run_checks()
    compiled = [r for _, r in results if r.name == "compiled kernels ran"]
    failed = [(a, r) for a, r in results if not r.ok and r.name != "compiled kernels ran"]
    assert not failed, failed
    assert compiled
    if hopscotch_ext.info()["loaded"]:
        assert all(r.ok for r in compiled), compiled
    else:
        assert all(not r.ok and "the pure-torch fallback ran" in r.detail for r in compiled), compiled


def test_op_counter_sees_the_patched_ops():
    model = tiny_model("llama")
    patch_model(model)
    with OpCounter() as counter, torch.no_grad():
        model(torch.tensor([[5, 6, 7]]))
    ops = counter.hopscotch_ops()
    # use_cache (the config's default): the model's own cache, written by the rotary kernel's cache variant
    assert ops["hopscotch_ext::rotary_embedding_kv_cache"] == model.config.num_hidden_layers
    assert ops["hopscotch_ext::silu_gate_up"] == model.config.num_hidden_layers  # the fused MLP op


@needs_extension
def test_doctor_cli_passes_with_the_compiled_kernels(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "hopscotch", "doctor", "--arch", "llama"], capture_output=True,
                        text=True, timeout=300, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    n = len(INTERNALS) + 5  # the transformers internals once, then five checks on the llama
    assert "transformers " + transformers.__version__ in ok.stdout and f"{n} passed, 0 failed" in ok.stdout


def test_every_transformers_internal_has_a_passing_probe():
    """Each private part of transformers the patch leans on is named in hf_compat.INTERNALS, and its probe passes on
    the installed release (the doctor runs them)."""
    assert set(INTERNALS) == {"the cache's argument name", "Cache base fields", "generate()'s cache factory"}
    for name, probe in INTERNALS.items():
        assert probe(), name


def test_a_changed_cache_factory_fails_the_doctor_by_name(monkeypatch):
    """A release that renames generate()'s cache factory, or changes its parameters, fails its doctor line (and
    patch_model refuses to wrap a method it does not know, instead of binding arguments wrongly)."""
    from transformers.generation.utils import GenerationMixin

    original = GenerationMixin._prepare_cache_for_generation

    def changed(self, generation_config, kwargs, generation_mode, batch_size, max_length):
        return original(self, generation_config, kwargs, generation_mode, batch_size, max_length)

    monkeypatch.setattr(GenerationMixin, "_prepare_cache_for_generation", changed)
    results = dict((r.name, r) for a, r in run_checks(archs=["llama"]) if a == "hf")
    bad = results["generate()'s cache factory"]
    assert not bad.ok and "takes ['generation_config', 'kwargs'" in bad.detail, bad
    with pytest.raises(RuntimeError, match="_prepare_cache_for_generation takes"):
        patch_model(tiny_model("llama"))
    monkeypatch.delattr(GenerationMixin, "_prepare_cache_for_generation")
    results = dict((r.name, r) for a, r in run_checks(archs=["llama"]) if a == "hf")
    assert "GenerationMixin has no _prepare_cache_for_generation" in results["generate()'s cache factory"].detail


def test_a_changed_cache_constructor_fails_the_doctor_by_name(monkeypatch):
    from transformers.cache_utils import Cache

    def changed(self, layer_specs=None):
        self.layer_specs = layer_specs

    monkeypatch.setattr(Cache, "__init__", changed)
    results = dict((r.name, r) for a, r in run_checks(archs=["llama"]) if a == "hf")
    assert not results["Cache base fields"].ok and "Cache.__init__(layers=[]) failed" in \
        results["Cache base fields"].detail


def test_doctor_cli_fails_on_the_fallback_unless_allowed(tmp_path):
    env = {**__import__("os").environ, "HOPSCOTCH_DISABLE_EXTENSION": "1"}
    bad = subprocess.run([sys.executable, "-m", "hopscotch", "doctor", "--arch", "llama"], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path, env=env)
    assert bad.returncode == 1 and "FAIL llama     compiled kernels ran" in bad.stdout, bad.stdout + bad.stderr
    allowed = subprocess.run([sys.executable, "-m", "hopscotch", "doctor", "--arch", "llama", "--allow-fallback"],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr


def test_hopscotch_loads_models_without_hub_kernels(tiny_dir, monkeypatch):
    """transformers >= 5.25 kernelizes from_pretrained by default (kernels fetched from the Hub); hopscotch's
    loader asks for transformers' own modules on every version, and the model it returns is not kernelized."""
    from transformers import AutoModelForCausalLM

    from hopscotch.models import load_model

    seen: list[dict] = []
    real = AutoModelForCausalLM.from_pretrained.__func__

    def recording(cls, *args, **kwargs):
        seen.append(dict(kwargs))
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(recording))
    model = load_model(str(tiny_dir), with_tokenizer=False)
    assert seen and all(kw.get("use_kernels") is False for kw in seen), seen
    assert not getattr(model, "use_kernels", False)
