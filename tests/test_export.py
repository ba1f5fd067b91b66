"""Export round trips in all three formats, the folding of the scalars, refusals and interrupted exports."""

from __future__ import annotations

import json

import pytest
import torch

import hopscotch
from hopscotch import SkipPlan, apply_plan, export_model, from_pretrained
from hopscotch.hf_compat import output_cache
from hopscotch.export import ExportError, FoldError
from hopscotch.patch import kv_cache_bytes, patched_layers
from decilm_reference import decilm_logits
from model_testing import tiny_model

# Folding moves the residual scalars through the RMSNorms, which are scale-invariant only up to eps:
# Norm(c x) = x / sqrt(mean(x^2) + eps / c^2). With eps = 1e-6, mean(x^2) ~ 1 and c within [0.3, 3] here, the
# relative change of every norm is below ~1e-5, so exported and patched float32 logits (magnitude ~5) agree to
# ~1e-4; the rest of the difference is float32 rounding of the rescaled weights.
FOLD_TOL = dict(rtol=1e-4, atol=2e-4)


def _plan(model, attn=(0, 3), mlp=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    scalars = 0.6 + 0.8 * torch.rand(model.config.num_hidden_layers, 4, generator=g)
    return SkipPlan.for_model(model, attn, mlp, scalars, method="test")


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral"])
@pytest.mark.parametrize("shard", ["5GB", "20KB"])
def test_hopscotch_format_round_trip(arch, shard, tmp_path):
    model = tiny_model(arch)
    plan = _plan(model, attn=(0, 3), mlp=(2,))
    ids = torch.randint(3, 97, (2, 11))
    apply_plan(model, plan)
    ref = _logits(model, ids)
    out = export_model(model, plan, tmp_path / "exp", format="hopscotch", max_shard_size=shard)
    names = set()
    files = sorted(out.glob("model*.safetensors"))
    assert (len(files) > 1) == (shard == "20KB")
    from safetensors import safe_open

    for f in files:
        with safe_open(str(f), "pt") as st:
            names |= set(st.keys())
    assert not any(n.startswith(("model.layers.0.self_attn", "model.layers.3.self_attn", "model.layers.2.mlp"))
                   for n in names)
    assert not any("attn_scale" in n for n in names)
    loaded = from_pretrained(out)
    torch.testing.assert_close(_logits(loaded, ids), ref, **FOLD_TOL)
    assert all(float(v) == 1.0 for layer in patched_layers(loaded) for v in layer.scalars())  # folded
    assert SkipPlan.load(out / "hopscotch_plan.json") == plan  # the plan travels with the export
    with torch.no_grad():
        res = loaded.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                              return_dict_in_generate=True)
    assert len(output_cache(res).layers) == 3  # compact cache: 5 layers, 2 attention blocks skipped
    assert kv_cache_bytes(output_cache(res)) > 0


def test_decilm_format_read_by_a_minimal_reader_of_its_semantics(tmp_path):
    model = tiny_model("llama", intermediate_size=256, tie_word_embeddings=True)  # ffn_mult = 6 exactly
    plan = _plan(model, attn=(0, 2), mlp=(4,))
    ids = torch.randint(3, 97, (2, 9))
    apply_plan(model, plan)
    ref = _logits(model, ids)
    out = export_model(model, plan, tmp_path / "deci", format="decilm")
    cfg = json.loads((out / "config.json").read_text())
    assert [b["attention"]["no_op"] for b in cfg["block_configs"]] == [True, False, True, False, False]
    assert [b["ffn"]["no_op"] for b in cfg["block_configs"]] == [False, False, False, False, True]
    assert cfg["block_configs"][1]["attention"]["n_heads_in_group"] == 2
    torch.testing.assert_close(decilm_logits(out, ids).float(), ref, **FOLD_TOL)


@pytest.mark.parametrize("arch,overrides,pattern", [
    ("qwen2", {"intermediate_size": 256}, r"attention biases"),
    ("qwen3", {"intermediate_size": 256}, r"model_type 'qwen3' .*per-head q/k norms"),
    ("mistral", {"intermediate_size": 256}, r"sliding-window attention \(window 7\)"),
    ("llama", {}, r"intermediate_size 88 \(not a multiple of 256"),
])
def test_decilm_refuses_what_it_cannot_represent(arch, overrides, pattern, tmp_path):
    model = tiny_model(arch, **overrides)
    with pytest.raises(ExportError, match=pattern):
        export_model(model, _plan(model), tmp_path / "deci", format="decilm")
    assert not (tmp_path / "deci").exists()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_vanilla_format_loads_with_stock_transformers(arch, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(arch)
    plan = _plan(model, attn=(1, 4), mlp=(0,))
    ids = torch.randint(3, 97, (1, 12))
    apply_plan(model, plan)
    ref = _logits(model, ids)
    out = export_model(model, plan, tmp_path / "van", format="vanilla")
    stock = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert not hopscotch.is_patched(stock)
    torch.testing.assert_close(_logits(stock, ids), ref, **FOLD_TOL)
    assert float(stock.model.layers[1].self_attn.o_proj.weight.detach().abs().max()) == 0.0


def test_export_never_overwrites_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    model = tiny_model("llama")
    plan = _plan(model)
    target = tmp_path / "exp"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match=r"is not empty; pass overwrite=True"):
        export_model(model, plan, target)
    assert (target / "keep.txt").read_text() == "mine"

    import safetensors.torch

    calls = {"n": 0}
    real = safetensors.torch.save_file

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("interrupted mid-export")
        return real(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", failing)
    with pytest.raises(KeyboardInterrupt):
        export_model(model, plan, tmp_path / "new", max_shard_size="20KB")
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]  # no temporary directory left behind
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    export_model(model, plan, target, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "config.json").is_file()


def test_fold_refuses_a_sign_flip_and_unknown_formats(tmp_path):
    model = tiny_model("llama")
    scalars = torch.ones(5, 4)
    scalars[2, 1] = -0.5
    plan = SkipPlan.for_model(model, [], [], scalars)
    with pytest.raises(FoldError, match=r"residual scale reaching attention block 2 is -0.5"):
        export_model(model, plan, tmp_path / "x")
    with pytest.raises(ExportError, match=r"unknown export format 'onnx'"):
        export_model(model, plan, tmp_path / "x", format="onnx")
    with pytest.raises(ExportError, match=r"not a format='hopscotch' export"):
        export_model(model, SkipPlan.for_model(model, [1]), tmp_path / "v", format="vanilla")
        from_pretrained(tmp_path / "v")


@pytest.mark.real_model
def test_smollm2_exports_in_every_format(smollm2_fresh, tmp_path):
    model, tok = smollm2_fresh
    plan = SkipPlan.for_model(model, [3, 11, 17, 25], [], 0.9 + 0.2 * torch.rand(30, 4,
                                                                                generator=torch.Generator().manual_seed(1)))
    ids = tok(["The largest planet in the solar system is"], return_tensors="pt")["input_ids"]
    apply_plan(model, plan)
    ref = _logits(model, ids)
    # float32, 30 layers, logits ~20: the fold's eps effect and the reordering stay within ~1e-3.
    tol = dict(rtol=1e-4, atol=2e-3)
    out = export_model(model, plan, tmp_path / "h", tokenizer=tok)
    torch.testing.assert_close(_logits(from_pretrained(out), ids), ref, **tol)
    deci = export_model(model, plan, tmp_path / "d", format="decilm")
    torch.testing.assert_close(decilm_logits(deci, ids).float(), ref, **tol)
