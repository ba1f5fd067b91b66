"""Gemma 3 beyond the parametrized patch tests: its exports (the fold onto the post-block norms), the engine formats'
refusal, and the sliding-window blocks' cache."""

from __future__ import annotations

import pytest
import torch

from hopscotch import SkipPlan, apply_plan, export_model, from_pretrained
from hopscotch.export import ExportError
from hopscotch.export.fold import norm_eps
from hopscotch.hf_compat import FROM_PRETRAINED_KWARGS
from hopscotch.patch import patched_layers
from tests.helpers.model_testing import tiny_model


def _scale_plan(model, attn=(1, 4), mlp=(3,)):
    """Scalars that take the residual scale C to ~0.3 and ~3 (a learned plan stays near 1)."""
    scalars = torch.ones(model.config.num_hidden_layers, 4)
    scalars[:, 0] = 0.8  # b_att
    scalars[:, 2] = 1.3  # b_mlp
    scalars[0, 1], scalars[2, 3], scalars[2, 1] = 0.3, 3.0, 3.5  # s_att, s_mlp, s_att
    return SkipPlan.for_model(model, attn, mlp, scalars, method="test")


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_hopscotch_format_folds_into_the_post_block_norms_exactly(tmp_path):
    model = tiny_model("gemma3", rms_norm_eps=1e-3)  # a large eps makes the eps part of the fold visible
    plan = _scale_plan(model)
    ids = torch.randint(3, 97, (2, 11), generator=torch.Generator().manual_seed(0))
    apply_plan(model, plan)
    ref = _logits(model, ids)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    out = export_model(model, plan, tmp_path / "h")
    loaded = from_pretrained(out)
    err = (_logits(loaded, ids) - ref).abs().max().item()
    assert err < 2e-5, err
    assert all(float(v) == 1.0 for layer in patched_layers(loaded) for v in layer.scalars())  # folded
    lsd = loaded.state_dict()
    # o_proj / down_proj unchanged (their post-block norm would undo a factor); the post-norms' gains carry it
    for name in ("model.layers.0.self_attn.o_proj.weight", "model.layers.2.mlp.down_proj.weight"):
        assert torch.equal(lsd[name], sd[name])
    gain, folded = 1 + sd["model.layers.2.post_attention_layernorm.weight"], 1 + lsd[
        "model.layers.2.post_attention_layernorm.weight"]
    assert not torch.allclose(gain, folded)
    assert not any(k.startswith(("model.layers.1.post_attention_layernorm", "model.layers.3.pre_feedforward",
                                 "model.layers.3.post_feedforward", "model.layers.4.self_attn")) for k in lsd)
    # the stream-reading norms are the pre-block ones, with eps / C^2 (C = 0.3 after layer 0's attention)
    eps = norm_eps(plan, 1e-3)
    assert set(eps) == {"input_layernorm", "pre_feedforward_layernorm", "norm"}
    assert loaded.model.layers[0].pre_feedforward_layernorm.eps == pytest.approx(1e-3 / 0.3 ** 2)
    assert loaded.model.layers[3].input_layernorm.eps == pytest.approx(eps["input_layernorm"][3])


def test_vanilla_format_loads_with_stock_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model("gemma3")
    plan = _scale_plan(model)
    ids = torch.randint(3, 97, (1, 12), generator=torch.Generator().manual_seed(1))
    apply_plan(model, plan)
    ref = _logits(model, ids)
    with pytest.warns(UserWarning, match="scale the residual stream"):
        out = export_model(model, plan, tmp_path / "van", format="vanilla")
    stock = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, **FROM_PRETRAINED_KWARGS)
    # one eps for every norm: exact up to eps |C^2 - 1| / (2 mean(h^2)) per norm (fold.py); eps here is 1e-6
    torch.testing.assert_close(_logits(stock, ids), ref, rtol=1e-4, atol=2e-4)
    # a skipped block's post-norm gain is 0 (w = -1): its output is exactly zero
    assert torch.equal(stock.model.layers[1].post_attention_layernorm.weight.detach(), -torch.ones(64))
    assert torch.equal(stock.model.layers[3].post_feedforward_layernorm.weight.detach(), -torch.ones(64))


@pytest.mark.parametrize("format", ["decilm", "gguf"])
def test_engine_formats_refuse_gemma3(format, tmp_path):
    model = tiny_model("gemma3", intermediate_size=256)
    with pytest.raises(ExportError, match=r"model_type 'gemma3_text' .*sandwich norms"):
        export_model(model, _scale_plan(model), tmp_path / "e", format=format)
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("name,value", [("attn_logit_softcapping", 50.0), ("final_logit_softcapping", 30.0),
                                        ("use_bidirectional_attention", True)])
def test_patch_refuses_what_it_does_not_implement(name, value):
    from hopscotch import patch_model
    from hopscotch.arch import UnsupportedModelError

    model = tiny_model("gemma3")
    setattr(model.config, name, value)
    with pytest.raises(UnsupportedModelError, match=name):
        patch_model(model)


def test_sliding_blocks_hold_about_two_windows_and_cached_equals_uncached_past_them():
    """Window 5: a sliding block's buffers hold max(2 * 5, 4 + prompt) tokens whatever the length (its last 4 keys
    move to the front when full); a global block holds the whole capacity. Greedy tokens equal recomputation."""
    from hopscotch import patch_model, set_skips
    from hopscotch.hf_compat import output_cache
    from hopscotch.patch import kv_cache_bytes
    from tests.helpers.model_testing import greedy_without_cache, left_padded_batch

    model = tiny_model("gemma3", num_layers=6)  # sliding blocks 0, 1, 3, 4; global 2, 5
    patch_model(model)
    set_skips(model, attention=[1, 5])
    ids, mask = left_padded_batch(97, [7, 3, 6])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=40, do_sample=False, pad_token_id=0,
                             return_dict_in_generate=True)
        assert torch.equal(out.sequences, greedy_without_cache(model, ids, mask, 40))
    cache = output_cache(out)
    assert cache.capacity == 7 + 40 - 1
    held = {b.layer_idx: b.key_buffer.shape[2] for b in cache.layers}
    assert held == {0: 11, 2: 46, 3: 11, 4: 11}  # max(2 * 5, 4 + 7)
    per_token = 2 * 3 * 1 * 16 * 4  # keys and values: batch 3, 1 KV head, head_dim 16, float32
    assert kv_cache_bytes(cache) == per_token * (3 * 11 + 46)
    assert all(b.offset > 0 for b in cache.layers if b.sliding_window)  # they did slide


def test_window_buffers_refuse_what_they_cannot_serve():
    from hopscotch import patch_model
    from hopscotch.hf_compat import cache_kwargs
    from hopscotch.patch import CacheCapacityError, CacheMismatchError, HopscotchCache

    model = tiny_model("gemma3")
    patch_model(model)
    cache = HopscotchCache()
    ids = torch.randint(3, 97, (1, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model(ids, **cache_kwargs(cache), use_cache=True)  # 20 tokens: buffers of 4 + 20 slots
        for _ in range(5):  # the first step slides: positions 20.. are held
            model(ids[:, :1], **cache_kwargs(cache), use_cache=True)
    assert [b.offset for b in cache.layers if b.sliding_window] == [20] * 4
    with pytest.raises(CacheCapacityError, match=r"cannot crop to 23 tokens: .*window_buffers=False"):
        cache.crop(23)
    cache.crop(24)  # the 4 keys before position 24 are still held
    assert cache.get_seq_length() == 24
    with pytest.raises(CacheMismatchError, match=r"compiled step .*window_buffers=False"):
        cache.check_layout(cache.kept)
