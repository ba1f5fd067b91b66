"""The patched model's own KV cache (HopscotchCache) and its decode step: the contract of docs/ARCHITECTURE.md §2.9.

Each test states one promise: generate() uses the cache by default and equals decoding without any cache (left
padding, growth mid-generation, every architecture, sliding windows, beam search), the cache holds exactly the kept
blocks' share, a decode step copies nothing of the filled cache and dispatches a pinned number of ops per kept
block, and one decode step compiles with torch.compile(fullgraph=True) without recompiling as the length grows.
"""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from hopscotch.doctor import OpCounter
from hopscotch.hf_compat import cache_kwargs, output_cache
from hopscotch.patch import (CacheCapacityError, CacheMismatchError, HopscotchCache, kv_cache_bytes, patch_model,
                             set_skips, unpatch_model)
from tests.helpers.model_testing import ARCHS, greedy_without_cache, left_padded_batch, tiny_model


def _ids(batch=2, seq=7, seed=0):
    return torch.randint(3, 97, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _generate(model, ids, mask, new, **kw):
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0, **kw)


# ---- generate() with the model's own cache -------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_uses_the_own_cache_and_equals_decoding_without_one(arch):
    """Every architecture (Qwen3's q/k norms; Qwen2 and Mistral slide windows of 6 and 7 tokens, which the 9 + 12
    tokens outgrow), a skipped block 0, left padding."""
    model = tiny_model(arch)
    patch_model(model)
    set_skips(model, attention=[0, 3])
    ids, mask = left_padded_batch(97, [9, 4, 12])
    out = _generate(model, ids, mask, 12, return_dict_in_generate=True)
    cache = output_cache(out)
    assert isinstance(cache, HopscotchCache) and len(cache.layers) == 3
    assert cache.capacity == ids.shape[1] + 12 - 1  # sized for generate()'s max_length: it never grew
    with torch.no_grad():
        assert torch.equal(out.sequences, greedy_without_cache(model, ids, mask, 12))


def test_left_padded_batch_of_16_equals_decoding_without_a_cache():
    model = tiny_model("llama")
    patch_model(model)
    set_skips(model, attention=[2])
    lengths = [3 + (5 * i) % 14 for i in range(16)]
    ids, mask = left_padded_batch(97, lengths, seed=3)
    gen = _generate(model, ids, mask, 10)
    with torch.no_grad():
        assert torch.equal(gen, greedy_without_cache(model, ids, mask, 10))


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_a_prompt_longer_than_the_first_capacity_grows_the_cache_mid_generation(arch):
    model = tiny_model(arch)
    patch_model(model)
    set_skips(model, attention=[1])
    ids, mask = left_padded_batch(97, [11, 8])
    cache = HopscotchCache(capacity=4)
    gen = _generate(model, ids, mask, 16, **cache_kwargs(cache))
    with torch.no_grad():
        ref = greedy_without_cache(model, ids, mask, 16)
    assert torch.equal(gen, ref)
    # The prompt (11) outgrew the first capacity (4); decoding then doubled it twice: 11 -> 22 -> 44 >= 11 + 16 - 1.
    assert cache.capacity == 44 and cache.get_seq_length() == 26


def test_beam_search_equals_the_unpatched_model():
    model = tiny_model("qwen2")
    ids, mask = left_padded_batch(97, [7, 5])
    ref = _generate(model, ids, mask, 8, num_beams=3)
    patch_model(model)
    assert torch.equal(_generate(model, ids, mask, 8, num_beams=3), ref)


def test_a_requested_cache_implementation_is_honoured():
    model = tiny_model("llama")
    patch_model(model)
    set_skips(model, attention=[0])
    ids, mask = left_padded_batch(97, [6, 9])
    out = _generate(model, ids, mask, 5, return_dict_in_generate=True, cache_implementation="dynamic")
    assert type(output_cache(out)) is DynamicCache and len(output_cache(out).layers) == 4
    own = _generate(model, ids, mask, 5)
    assert torch.equal(out.sequences, own)
    unpatch_model(model)
    assert "_prepare_cache_for_generation" not in vars(model)  # the generate hook left with the patch


# ---- memory and layout ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("skips", [[0], [0, 1, 4], [2, 3]])
def test_kv_bytes_are_the_kept_fraction_at_equal_capacity(skips):
    model = tiny_model("llama")
    patch_model(model)
    ids = _ids(batch=3)
    sizes = {}
    for plan in ([], skips):
        set_skips(model, attention=plan)
        cache = HopscotchCache(capacity=40)
        with torch.no_grad():
            model(ids, **cache_kwargs(cache), use_cache=True)
        sizes[len(plan)] = kv_cache_bytes(cache)
        assert [b.layer_idx for b in cache.layers] == [i for i in range(5) if i not in plan]
    # 3 sequences x 2 KV heads x 40 slots x 16 dims x 4 bytes, keys and values, per kept block.
    assert sizes[0] == 5 * 2 * 3 * 2 * 40 * 16 * 4
    assert sizes[len(skips)] * 5 == sizes[0] * (5 - len(skips))


def test_nothing_is_reserved_for_max_position_embeddings_and_max_capacity_is_enforced():
    model = tiny_model("llama")
    patch_model(model)
    with torch.no_grad():
        out = model(_ids(seq=7), use_cache=True)
        assert out.past_key_values.capacity == 256 < model.config.max_position_embeddings
        small = HopscotchCache(max_capacity=8)
        model(_ids(seq=7), **cache_kwargs(small), use_cache=True)
        model(_ids(seq=1), **cache_kwargs(small), use_cache=True)
        with pytest.raises(CacheCapacityError, match=r"needs 9 cached tokens \(8 held \+ 1 new\).*max_capacity=8"):
            model(_ids(seq=1), **cache_kwargs(small), use_cache=True)
        with pytest.raises(CacheCapacityError, match="holds a batch of 2 sequences; this forward has 3"):
            model(_ids(batch=3, seq=1), **cache_kwargs(out.past_key_values), use_cache=True)
    with pytest.raises(ValueError, match=r"HopscotchCache\(capacity=0\): expected a positive integer"):
        HopscotchCache(capacity=0)
    with pytest.raises(ValueError, match="capacity must not exceed max_capacity"):
        HopscotchCache(capacity=9, max_capacity=8)


def test_a_cache_is_refused_under_another_plan_and_relaid_out_when_empty():
    model = tiny_model("llama")
    patch_model(model)
    cache = HopscotchCache()
    with torch.no_grad():
        set_skips(model, attention=[0])
        model(_ids(seq=5), **cache_kwargs(cache), use_cache=True)
        set_skips(model, attention=[1])
        with pytest.raises(CacheMismatchError, match=r"kept; the current plan keeps \[0, 2, 3, 4\]"):
            model(_ids(seq=1), **cache_kwargs(cache), use_cache=True)
        cache.reset()
        model(_ids(seq=5), **cache_kwargs(cache), use_cache=True)
    assert cache.kept == (0, 2, 3, 4) and cache.get_seq_length() == 5


def test_the_cache_refuses_an_unpatched_model_and_gradients():
    model = tiny_model("llama")
    with pytest.raises(TypeError, match="written only by a hopscotch-patched model"), torch.no_grad():
        model(_ids(), **cache_kwargs(HopscotchCache()), use_cache=True)
    patch_model(model)
    with pytest.raises(ValueError, match="serves inference only"):
        model(_ids(), **cache_kwargs(HopscotchCache()), use_cache=True)
    assert type(model(_ids(), use_cache=True).past_key_values) is DynamicCache  # training keeps HF's cache


def test_a_new_padding_token_in_an_unpadded_batch_is_refused_not_ignored():
    model = tiny_model("llama")
    patch_model(model)
    cache = HopscotchCache()
    ids = _ids(seq=5)
    with torch.no_grad():
        model(ids, attention_mask=torch.ones_like(ids), **cache_kwargs(cache), use_cache=True)
        mask = torch.ones(2, 6, dtype=torch.long)
        mask[1, -1] = 0
        with pytest.raises(RuntimeError, match="marks a new token of an unpadded batch as padding"):
            model(ids[:, :1], attention_mask=mask, **cache_kwargs(cache), use_cache=True)


def test_a_transformers_cache_gets_contiguous_keys_and_values_at_batch_16(monkeypatch):
    """A DynamicCache appends with torch.cat: strided inputs send CUDA's cat to its slow generic kernel."""
    seen = []
    update = DynamicLayer.update

    def spy(self, key_states, value_states, *args, **kwargs):
        seen.append(key_states.is_contiguous() and value_states.is_contiguous())
        return update(self, key_states, value_states, *args, **kwargs)

    monkeypatch.setattr(DynamicLayer, "update", spy)
    model = tiny_model("llama")
    patch_model(model)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(_ids(batch=16), **cache_kwargs(cache), use_cache=True)
        model(_ids(batch=16, seq=1), **cache_kwargs(cache), use_cache=True)
    assert len(seen) == 10 and all(seen)


# ---- the decode step ------------------------------------------------------------------------------------------


class _CopyWatch(OpCounter):
    """Counts ops, and records the largest tensor any copying op (cat, copy_, clone, index_copy_ ...) reads."""

    COPIES = ("cat", "copy_", "clone", "index_copy_", "index_put_", "contiguous", "_to_copy")

    def __init__(self):
        super().__init__()
        self.largest_copy = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in self.COPIES:
            flat = [a for x in args for a in (x if isinstance(x, (list, tuple)) else [x])]
            self.largest_copy = max([self.largest_copy] + [a.numel() for a in flat if isinstance(a, torch.Tensor)])
        return super().__torch_dispatch__(func, types, args, kwargs)


def _decode_counts(model, skips, batch=4, context=6):
    set_skips(model, attention=skips)
    cache = HopscotchCache()
    with torch.no_grad():
        model(_ids(batch=batch, seq=context), **cache_kwargs(cache), use_cache=True)
        with _CopyWatch() as watch:
            model(_ids(batch=batch, seq=1), **cache_kwargs(cache), use_cache=True)
    return watch, cache


# A kept attention block at a decode step dispatches these and nothing else (a regression shows here):
# add_rms_norm (in place), the fused q|k|v matmul and its split into three views, one kernel that rotates q and
# writes the rotated k and the v into their cache slots, two slices (the filled keys and values), SDPA with the
# transposes around it, o_proj. Nothing copies the filled cache.
ATTENTION_BLOCK_OPS = {"hopscotch_ext::scaled_add_rms_norm_": 1, "aten::linear": 2, "aten::split_with_sizes": 1,
                       "aten::view": 3, "hopscotch_ext::rotary_embedding_kv_cache": 1, "aten::slice": 2,
                       "aten::transpose": 2, "aten::scaled_dot_product_attention": 1, "aten::reshape": 1}


@pytest.mark.parametrize("batch", [1, 16])
def test_ops_per_kept_attention_block_at_a_decode_step_are_pinned(batch):
    model = tiny_model("llama")
    patch_model(model)
    kept, cache = _decode_counts(model, [], batch)
    one_less, _ = _decode_counts(model, [3], batch)
    diff = kept.counts.copy()
    diff.subtract(one_less.counts)
    assert {k: v for k, v in diff.items() if v} == ATTENTION_BLOCK_OPS
    assert sum(ATTENTION_BLOCK_OPS.values()) == 14
    assert all(b.key_buffer.is_contiguous() and b.value_buffer.is_contiguous() for b in cache.layers)
    # The step's ops do not depend on how much the cache holds, and nothing it copies is as large as one block's
    # cached keys: the only copies are the rotary table's (a few values per token).
    longer, _ = _decode_counts(model, [], batch, context=57)
    assert longer.counts == kept.counts
    one_block_keys = batch * 2 * 6 * 16
    assert longer.largest_copy < one_block_keys, longer.largest_copy


def test_a_decode_step_compiles_fullgraph_without_recompiling_as_the_length_grows():
    model = tiny_model("mistral")  # sliding window 7: the compiled step masks it over the whole capacity
    patch_model(model)
    set_skips(model, attention=[1])
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def step(nxt, cache):
        return model(input_ids=nxt, **cache_kwargs(cache), use_cache=True).logits

    # full-size buffers for the compiled step; the eager one it is compared with keeps window-sized ones
    compiled_cache, eager_cache = HopscotchCache(capacity=48, window_buffers=False), HopscotchCache(capacity=48)
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend=counting_backend)  # fullgraph: a break is an error
    ids = _ids(batch=2, seq=9)
    with torch.no_grad():
        step(ids, compiled_cache)  # the prefill runs eagerly and allocates the capacity
        nxt = step(ids, eager_cache)[:, -1:].argmax(-1)
        for _ in range(32):
            got, want = compiled(nxt, compiled_cache), step(nxt, eager_cache)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            nxt = want[:, -1:].argmax(-1)
    assert len(graphs) == 1, f"{len(graphs)} compilations over 32 steps"
    assert compiled_cache.get_seq_length() == eager_cache.get_seq_length() == 9 + 32


def test_inference_runs_under_inference_mode_so_no_autograd_kernel_is_dispatched():
    """Under no_grad the custom ops' Python autograd kernels would still run per call; inference_mode skips them."""
    modes = []

    class Watch(OpCounter):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "hopscotch_ext":
                modes.append(torch.is_inference_mode_enabled())
            return super().__torch_dispatch__(func, types, args, kwargs)

    model = tiny_model("qwen3")
    patch_model(model)
    with torch.no_grad(), Watch():
        out = model(_ids(), use_cache=True)
    assert modes and all(modes)
    assert not out.logits.is_inference()  # what the caller gets back is an ordinary tensor
    out.logits.add_(1)  # (so it can be written in place)


@pytest.mark.parametrize("fill", ["prefill", "random"])
def test_the_e2e_benchmark_reports_the_own_caches_allocation(fill):
    """hopscotch bench's decode rows: the patched model's KV bytes are its HopscotchCache's allocation, the kept
    share of the full model's at equal capacity (prompt + new tokens)."""
    from hopscotch.bench.e2e import E2EConfig, run_e2e

    model = tiny_model("llama")
    cfg = E2EConfig(ks=[0, 2], providers=["hf", "hopscotch"], decode_batches=[3], prompt_len=9, new_tokens=4,
                    budget_s=0.01, min_reps=1, fill=fill)
    rows = {(r["provider"], r["k"], r["phase"]): r for r in run_e2e(model, cfg, progress=False)}
    kv = {k: rows[("hopscotch", k, "decode")]["kv_cache_bytes"] for k in (0, 2)}
    assert kv[0] == 5 * 2 * 3 * 2 * (9 + 4) * 16 * 4  # blocks x (K, V) x batch x heads x capacity x dims x bytes
    assert kv[2] * 5 == kv[0] * 3
    assert rows[("hf", 0, "decode")]["kv_cache_bytes"] == 5 * 2 * 3 * 2 * (9 + 4) * 16 * 4  # its tokens: the same
    assert not hasattr(model.model, "_hopscotch_state")  # left unpatched


def test_every_attention_block_skipped_decodes_and_benchmarks_with_the_own_cache():
    """k = L (what the k = 16 target's ideal saving is measured against): the own cache holds no block, the random
    fill has nothing to fill, and a compiled step has nothing to lay out."""
    from hopscotch.bench.e2e import E2EConfig, run_e2e

    model = tiny_model("llama")
    cfg = E2EConfig(ks=[5], providers=["hopscotch"], decode_batches=[2], prompt_len=6, new_tokens=3, budget_s=0.01,
                    min_reps=1, fill="random")
    rows = [r for r in run_e2e(model, cfg, progress=False) if r["phase"] == "decode"]
    assert [(r["k"], r["kv_cache_bytes"]) for r in rows] == [(5, 0)]
    empty = HopscotchCache()
    empty.bind((), lambda: [])
    empty.check_layout(())  # nothing kept: nothing a compiled step needs allocated
    with pytest.raises(CacheMismatchError, match="already laid out and allocated"):
        empty.check_layout((0,))
