"""Patching tiny models of every supported architecture: invariants 1 and 2, generation, caches, unpatching."""

from __future__ import annotations

import pytest
import torch

import hopscotch
from hopscotch.hf_compat import UnsupportedKeywordError, cache_kwargs, output_cache
from hopscotch.patch import (CacheMismatchError, get_scalars, kv_cache_bytes, patch_model, patched_layers,
                             set_skips, unpatch_model)
from tests.helpers.model_testing import (ARCHS, LOGIT_TOL, greedy_without_cache, left_padded_batch, tiny_config, tiny_model,
                           zeroed_attention)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _ids(batch=2, seq=13, vocab=97, seed=0):
    return torch.randint(3, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_patched_without_skips_is_the_original_model(arch, dtype):
    """Invariant 1: same logits within the dtype's tolerance, same greedy generation."""
    model = tiny_model(arch, dtype=dtype)
    ids = _ids()
    with torch.no_grad():
        ref = model(ids).logits.float()
        ref_gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False)
        patch_model(model)
        out = model(ids).logits.float()
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False)
    if arch == "gemma3" and dtype != torch.float32:
        # Four norms per layer, each scaling by ~2 on these random weights: HF's own half-precision logits are
        # ~0.25 off the float64 model's. The patched model (whose norms multiply by (1 + w) rounded to the dtype)
        # must be as close to float64 as HF is, within a factor 2.
        with torch.no_grad():
            truth = tiny_model(arch, dtype=torch.float64)(ids).logits.float()
        assert (out - truth).abs().max() <= 2 * (ref - truth).abs().max()
    else:
        torch.testing.assert_close(out, ref, **LOGIT_TOL[dtype])
    if dtype == torch.float32:  # low precision can flip a near-tie argmax on random weights
        assert torch.equal(gen, ref_gen)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("skips", [[0], [4], [0, 2, 4], [1, 2, 3]])
def test_skipping_equals_zeroed_attention_reference(arch, skips):
    model = tiny_model(arch)
    ids = _ids(seq=17)  # longer than the sliding windows of qwen2 / mistral
    with torch.no_grad(), zeroed_attention(model, skips):
        ref = model(ids).logits
    with torch.no_grad():
        hopscotch.patch_model(model)
        set_skips(model, attention=skips)
        out = model(ids).logits
    torch.testing.assert_close(out, ref, **LOGIT_TOL[torch.float32])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("skips", [[], [0], [0, 3]])
def test_cached_generation_equals_recomputation_left_padded(arch, skips):
    model = tiny_model(arch)
    ids, mask = left_padded_batch(97, [9, 4, 12])
    patch_model(model)
    set_skips(model, attention=skips)
    with torch.no_grad():
        gen = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
        ref = greedy_without_cache(model, ids, mask, 12)
    assert torch.equal(gen, ref)


@pytest.mark.parametrize("skips", [[], [0], [0, 1, 4], [2, 3]])
@pytest.mark.parametrize("cache_impl", ["dynamic", "static"])
def test_kv_memory_is_exactly_the_kept_fraction(skips, cache_impl):
    n_layers, new = 5, 9
    model = tiny_model("llama", num_layers=n_layers)
    ids = _ids(batch=3, seq=7)
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
              return_dict_in_generate=True, cache_implementation=cache_impl)
    with torch.no_grad():
        full = kv_cache_bytes(output_cache(model.generate(ids, **kw)))
        patch_model(model)
        set_skips(model, attention=skips)
        out = model.generate(ids, **kw)
    cache = output_cache(out)
    assert kv_cache_bytes(cache) * n_layers == full * (n_layers - len(skips))
    assert len(cache.layers) == n_layers - len(skips)
    # The length the cache reports is right even when block 0 is skipped (ARCHITECTURE.md §2.2): every token but the
    # last generated one has been written.
    assert int(cache.get_seq_length()) == ids.shape[1] + new - 1


def test_static_cache_generation_matches_dynamic():
    model = tiny_model("qwen2")
    ids, mask = left_padded_batch(97, [8, 5])
    patch_model(model)
    set_skips(model, attention=[0, 2])
    with torch.no_grad():
        a = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0)
        b = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0,
                           cache_implementation="static")
    assert torch.equal(a, b)


@pytest.mark.parametrize("impl", ["dynamic", "static", "offloaded"])
def test_each_transformers_cache_implementation_kept_is_adapted(impl):
    """generate(cache_implementation=...) gets the transformers cache it asked for, adapted at the edge
    (patch/hf_cache.py): compact (one layer per kept block) and the same tokens as recomputing without a cache.
    "offloaded" moves layers with CUDA streams in transformers (it fails on a machine without CUDA, unpatched too);
    "quantized" is tested in tests/test_quantized.py (it needs optimum-quanto)."""
    if impl == "offloaded" and not torch.cuda.is_available():
        pytest.skip("transformers' offloaded cache needs CUDA")
    device = "cuda" if impl == "offloaded" else "cpu"
    model = tiny_model("llama").to(device)
    ids, mask = left_padded_batch(97, [8, 5])
    ids, mask = ids.to(device), mask.to(device)
    patch_model(model)
    set_skips(model, attention=[0, 2])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0,
                             cache_implementation=impl, return_dict_in_generate=True)
        ref = greedy_without_cache(model, ids, mask, 8)
    cache = output_cache(out)
    assert type(cache).__name__ != "HopscotchCache" and len(cache.layers) == model.config.num_hidden_layers - 2
    assert torch.equal(out.sequences, ref)


def test_sliding_window_cache_types_follow_their_blocks():
    from transformers.cache_utils import DynamicCache

    model = tiny_model("qwen2", num_layers=6)  # layers 3..5 slide
    patch_model(model)
    set_skips(model, attention=[1, 4])
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(_ids(seq=9), **cache_kwargs(cache), use_cache=True)
    assert cache.is_sliding == [False, False, True, True]  # kept blocks 0, 2, 3, 5


def test_changing_the_skip_set_between_generate_calls():
    model = tiny_model("llama")
    ids = _ids(batch=1, seq=6)
    patch_model(model)
    outs = []
    with torch.no_grad():
        for skips in ([0], [1, 3], [], [0]):
            set_skips(model, attention=skips)
            outs.append(model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False))
    assert torch.equal(outs[0], outs[3])
    unpatch_model(model)
    with torch.no_grad(), zeroed_attention(model, [1, 3]):
        ref = greedy_without_cache(model, ids, torch.ones_like(ids), 8)
    assert torch.equal(outs[1], ref)


def test_a_cache_filled_under_another_skip_set_is_refused():
    from transformers.cache_utils import DynamicCache

    model = tiny_model("llama")
    patch_model(model)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        set_skips(model, attention=[0])
        model(_ids(seq=5), **cache_kwargs(cache), use_cache=True)
        set_skips(model, attention=[1])
        with pytest.raises(CacheMismatchError, match=r"another skip set \(kept attention blocks \[1, 2, 3, 4\]\)"):
            model(_ids(seq=1), **cache_kwargs(cache), use_cache=True)


def test_mlp_blocks_can_be_skipped():
    model = tiny_model("llama")
    ids = _ids()

    def zero(module, args, out):
        return torch.zeros_like(out)

    handles = [model.model.layers[i].mlp.register_forward_hook(zero) for i in (1, 4)]
    with torch.no_grad(), zeroed_attention(model, [1]):
        ref = model(ids).logits
    for h in handles:
        h.remove()
    with torch.no_grad():
        patch_model(model)
        set_skips(model, attention=[1], mlp=[1, 4])
        out = model(ids).logits
    torch.testing.assert_close(out, ref, **LOGIT_TOL[torch.float32])


def _reference_scaled_forward(model, ids, scalars, skip_attn):
    """h1 = b_att*Attn(Norm(h)) + s_att*h; out = b_mlp*MLP(Norm(h1)) + s_mlp*h1, written with HF's own modules."""
    base = model.model
    h = base.embed_tokens(ids)
    pos = torch.arange(ids.shape[1]).unsqueeze(0)
    pe = base.rotary_emb(h, pos)
    for i, layer in enumerate(base.layers):
        b_att, s_att, b_mlp, s_mlp = scalars[i]
        if i not in skip_attn:
            a, _ = layer.self_attn(hidden_states=layer.input_layernorm(h), position_embeddings=pe, attention_mask=None)
            h = b_att * a + s_att * h
        h = b_mlp * layer.mlp(layer.post_attention_layernorm(h)) + s_mlp * h
    return model.lm_head(base.norm(h))


def test_scalars_scale_as_the_paper_defines_and_train():
    model = tiny_model("llama", dtype=torch.float64)
    ids = _ids(seq=9)
    g = torch.Generator().manual_seed(3)
    scalars = 0.5 + torch.rand(5, 4, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ref = _reference_scaled_forward(model, ids, scalars, skip_attn={2})
    patch_model(model)
    set_skips(model, attention=[2])
    hopscotch.patch.set_scalars(model, scalars)
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for layer in patched_layers(model) for n, p in layer.named_parameters(recurse=False)]
    for p in params:
        p.requires_grad_(True)
    out = model(ids).logits
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)  # scalars are float32
    out.logsumexp(-1).mean().backward()
    # The skipped block's attention scalars take no part (h1 = h exactly); every other scalar gets a gradient.
    layer2 = patched_layers(model)[2]
    assert layer2.attn_scale.grad is None and layer2.attn_residual_scale.grad is None
    grads = [p.grad for p in params if p is not layer2.attn_scale and p is not layer2.attn_residual_scale]
    assert all(gr is not None and torch.isfinite(gr) and gr.abs() > 0 for gr in grads)
    assert get_scalars(model).dtype == torch.float32


def test_unpatch_restores_the_original_model():
    model = tiny_model("qwen3")
    ids = _ids()
    names_before = [n for n, _ in model.named_parameters()]
    with torch.no_grad():
        ref = model(ids).logits
        patch_model(model)
        set_skips(model, attention=[0, 1])
        assert "hopscotch layer 0: attention SKIPPED" in repr(model)
        unpatch_model(model)
        out = model(ids).logits
    assert not hopscotch.is_patched(model)
    assert "hopscotch" not in repr(model)
    assert [n for n, _ in model.named_parameters()] == names_before
    assert torch.equal(out, ref)
    # No parameter shares storage with another after unpatching (save_pretrained-safe).
    ptrs = [p.data_ptr() for p in model.parameters()]
    assert len(set(ptrs)) == len(ptrs)


def test_patching_keeps_state_dict_keys_and_fuses_without_copies():
    model = tiny_model("qwen2")
    keys = set(model.state_dict())
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    patch_model(model)
    new_keys = set(model.state_dict())
    assert keys <= new_keys
    assert {k.rsplit(".", 1)[1] for k in new_keys - keys} == {"attn_scale", "attn_residual_scale", "mlp_scale",
                                                               "mlp_residual_scale"}
    layer = patched_layers(model)[0]
    assert "fused [qkv, gate_up]" in layer.extra_repr()  # both projections fused, in place
    storages = {p.untyped_storage().data_ptr() for p in model.parameters() if p.dim() > 0}
    assert sum(s.nbytes() for s in {p.untyped_storage().data_ptr(): p.untyped_storage()
                                    for p in model.parameters()}.values()) <= n_bytes + 4 * 4 * 5
    assert len(storages) < len([p for p in model.parameters() if p.dim() > 0])


def test_model_to_dtype_after_patching_refuses_nothing():
    model = tiny_model("llama")
    ids = _ids()
    patch_model(model)
    model.to(torch.bfloat16)  # rebinds every weight: the fused projections must notice and rebuild
    with torch.no_grad():
        out = model(ids).logits
        unpatch_model(model)
        ref = model(ids).logits
    torch.testing.assert_close(out.float(), ref.float(), **LOGIT_TOL[torch.bfloat16])


def test_unsupported_architecture_is_refused_by_name():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(TypeError, match=r"model_type 'gpt2' .* is not supported; hopscotch patches llama, qwen2, "
                                        r"mistral, qwen3"):
        patch_model(model)


def test_patch_is_idempotent_and_outputs_hidden_states_refused():
    model = tiny_model("llama")
    patch_model(model)
    layers = list(model.model.layers)
    patch_model(model)
    assert list(model.model.layers) == layers
    with pytest.raises(UnsupportedKeywordError, match="output_hidden_states=True .*unpatch_model"):
        model(_ids(), output_hidden_states=True)


def test_tied_embeddings_and_inputs_embeds():
    model = tiny_model("llama", tie_word_embeddings=True)
    ids = _ids()
    with torch.no_grad():
        emb = model.get_input_embeddings()(ids)
        ref = model(inputs_embeds=emb).logits
        patch_model(model)
        out = model(inputs_embeds=emb).logits
        again = model(inputs_embeds=emb).logits
    torch.testing.assert_close(out, ref, **LOGIT_TOL[torch.float32])
    assert torch.equal(out, again)  # the caller's embeddings were not written to


def test_tiny_config_layer_types():
    assert tiny_config("qwen2", 6).layer_types == ["full_attention"] * 3 + ["sliding_attention"] * 3
