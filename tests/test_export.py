"""Export round trips in all three formats, the folding of the scalars, refusals and interrupted exports."""

from __future__ import annotations

import json

import pytest
import torch

import hopscotch
from hopscotch import SkipPlan, apply_plan, export_model, from_pretrained
from hopscotch.hf_compat import FROM_PRETRAINED_KWARGS, output_cache
from hopscotch.export import ExportError
from hopscotch.export.fold import FoldError
from hopscotch.export.formats import PLAN_SUBDIR, export_plan_path
from hopscotch.patch import kv_cache_bytes, patched_layers
from tests.helpers import DATA
from tests.helpers.decilm_reference import decilm_logits
from tests.helpers.model_testing import tiny_model

# Folding moves the residual scalars through the RMSNorms, which are scale-invariant only up to eps:
# Norm(c x) = x / sqrt(mean(x^2) + eps / c^2). The hopscotch format writes each norm's eps / C^2 and is exact up to
# float32 rounding of the rescaled weights; the one-eps formats keep eps: with eps = 1e-6, mean(x^2) ~ 1e-2 and c
# within [0.3, 3] here, every norm moves by below ~1e-4 relative, and float32 logits (magnitude ~5) agree to ~1e-4.
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
    assert SkipPlan.load(export_plan_path(out)) == plan  # the plan travels with the export, in its subfolder
    with torch.no_grad():
        res = loaded.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                              return_dict_in_generate=True)
    assert len(output_cache(res).layers) == 3  # compact cache: 5 layers, 2 attention blocks skipped
    assert kv_cache_bytes(output_cache(res)) > 0


@pytest.mark.filterwarnings("ignore:attention block 0 is skipped")
def test_decilm_format_read_by_a_minimal_reader_of_its_semantics(tmp_path):
    model = tiny_model("llama", intermediate_size=256, tie_word_embeddings=True)  # ffn_mult = 6 exactly
    plan = _plan(model, attn=(0, 2), mlp=(0, 4))  # layer 0 skipped entirely: the stream starts at layer 1
    ids = torch.randint(3, 97, (2, 9))
    apply_plan(model, plan)
    ref = _logits(model, ids)
    out = export_model(model, plan, tmp_path / "deci", format="decilm")
    cfg = json.loads((out / "config.json").read_text())
    assert [b["attention"]["no_op"] for b in cfg["block_configs"]] == [True, False, True, False, False]
    assert [b["ffn"]["no_op"] for b in cfg["block_configs"]] == [True, False, False, False, True]
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
    # as hopscotch's loaders do: no hub kernels (transformers >= 5.25 fetches them by default; tests reach no hub)
    stock = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, **FROM_PRETRAINED_KWARGS)
    assert not hopscotch.is_patched(stock)
    torch.testing.assert_close(_logits(stock, ids), ref, **FOLD_TOL)
    assert float(stock.model.layers[1].self_attn.o_proj.weight.detach().abs().max()) == 0.0


def _scale_plan(model):
    """Residual scalars that take the stream scale C from 1 to ~0.3 and to ~3 (a learned plan stays near 1)."""
    scalars = torch.ones(model.config.num_hidden_layers, 4)
    scalars[:, 0] = 0.8  # b_att
    scalars[1, 1], scalars[2, 3], scalars[3, 1] = 0.3, 3.0, 3.5  # s_att, s_mlp, s_att
    return SkipPlan.for_model(model, [4], [], scalars, method="test")


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_hopscotch_format_folds_each_norms_eps_exactly(arch, tmp_path):
    from transformers import AutoModelForCausalLM

    from hopscotch.export.fold import norm_eps, stream_scale_range

    # A large eps against these activations (mean(h^2) ~ 1e-2) makes the eps part of the fold visible.
    model = tiny_model(arch, rms_norm_eps=1e-3)
    plan = _scale_plan(model)
    lo, hi = stream_scale_range(plan)
    assert lo == pytest.approx(0.3) and hi == pytest.approx(0.3 * 3.0 * 3.5)
    ids = torch.randint(3, 97, (2, 9))
    apply_plan(model, plan)
    ref = _logits(model, ids)
    loaded = from_pretrained(export_model(model, plan, tmp_path / "h"))
    exact = (_logits(loaded, ids) - ref).abs().max().item()
    assert exact < 2e-5
    eps = norm_eps(plan, 1e-3)
    assert loaded.model.layers[2].input_layernorm.variance_epsilon == pytest.approx(1e-3 / 0.3 ** 2)
    assert loaded.model.layers[3].post_attention_layernorm.variance_epsilon == pytest.approx(eps["post_attention_layernorm"][3])
    assert loaded.model.norm.variance_epsilon == pytest.approx(1e-3 / hi ** 2)
    with pytest.warns(UserWarning, match=r"scale the residual stream by 0.3 to 3.15.*format='hopscotch' .*exact"):
        van = export_model(model, plan, tmp_path / "v", format="vanilla")
    stock = AutoModelForCausalLM.from_pretrained(van, dtype=torch.float32, **FROM_PRETRAINED_KWARGS)
    one_eps = (_logits(stock, ids) - ref).abs().max().item()
    assert one_eps > 100 * max(exact, 1e-7)  # the error the per-norm eps removes is real


@pytest.mark.parametrize("fmt", [1, 3, None])
def test_a_hopscotch_export_of_another_format_is_refused(fmt, tmp_path):
    """Format 2 is the first released (0.1.0) and the only one read: a format-1 entry (no per-norm eps) is refused
    like a newer one, naming the file and the format."""
    model = tiny_model("llama")
    out = export_model(model, _plan(model), tmp_path / "h")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["hopscotch"]["format"] == 2
    cfg["hopscotch"]["format"] = fmt
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match=rf"h/config.json: hopscotch export format {fmt}; this version reads "
                                          r"format 2 \(written by another hopscotch version"):
        from_pretrained(out)
    cfg["hopscotch"]["format"] = 2
    del cfg["hopscotch"]["norm_eps"]["norm"]
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match=r"h/config.json: its 'hopscotch' entry lacks norm_eps"):
        from_pretrained(out)


@pytest.mark.filterwarnings("ignore:attention block 0 is skipped")
@pytest.mark.parametrize("format", ["hopscotch", "decilm", "vanilla"])
def test_export_holds_only_what_weight_loaders_expect_at_the_top_level(format, tmp_path):
    """Engines (vLLM) load every top-level *.safetensors as weights: the plan lives in a subfolder."""
    model = tiny_model("llama", intermediate_size=256)
    plan = _plan(model, attn=(1, 3))
    out = export_model(model, plan, tmp_path / "exp", format=format, max_shard_size="20KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    weights = sorted(p.name for p in out.glob("*.safetensors"))
    assert weights == sorted(set(index["weight_map"].values())) and len(weights) > 1
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [PLAN_SUBDIR]
    assert export_plan_path(out) == out / PLAN_SUBDIR and SkipPlan.load(export_plan_path(out)) == plan


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
    with pytest.raises(ExportError, match=r"holds files hopscotch did not write \(keep\.txt\)"):
        export_model(model, plan, target, overwrite=True)  # overwrite replaces only what hopscotch wrote
    assert (target / "keep.txt").read_text() == "mine"
    new = export_model(model, plan, tmp_path / "new")
    assert export_model(model, plan, new, overwrite=True) == new and (new / "config.json").is_file()


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_smollm2_learned_plan_folds_exactly_in_hopscotch_format_and_within_eps_in_vanilla(smollm2_fresh, tmp_path):
    """Realistic trained scalars (a k=4 plan the fast search learned on arc_easy, C within [0.98, 1.46])."""
    import warnings

    from transformers import AutoModelForCausalLM

    model, tok = smollm2_fresh
    plan = SkipPlan.load(DATA / "smollm2_learned_plan")
    ids = tok(["Which gas do plants take in from the air to make food? Answer: carbon dioxide"],
              return_tensors="pt")["input_ids"]
    apply_plan(model, plan)
    ref = _logits(model, ids)
    exact = (_logits(from_pretrained(export_model(model, plan, tmp_path / "h")), ids) - ref).abs().max().item()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # C stays near 1: no eps warning
        van = export_model(model, plan, tmp_path / "v", format="vanilla")
    stock = AutoModelForCausalLM.from_pretrained(van, dtype=torch.float32, **FROM_PRETRAINED_KWARGS)
    one_eps = (_logits(stock, ids) - ref).abs().max().item()
    # float32 logits up to ~30: the per-norm eps leaves float rounding only; the one eps adds its own (small) error.
    assert exact < 1e-3
    assert one_eps < 5e-3


def _vllm_ffn_width(ffn_mult: float, hidden: int) -> int:
    width = int(2 * ffn_mult * hidden / 3)
    return width if width % 256 == 0 else width + 256 - width % 256


@pytest.mark.parametrize("tied", [True, False])
def test_decilm_export_holds_what_vllms_nemotron_nas_loader_reads(tied, tmp_path):
    """What vLLM's reader reads, checked without vLLM (tests/test_vllm.py loads the export in vLLM itself).

    What vllm/model_executor/models/nemotron_nas.py reads, at vllm-project/vllm commit
    00bd1493b3e82d6c13c68ee8a0e1c5a96707e190: the config through transformers (no built-in "nemotron-nas" type:
    trust_remote_code and config.json's auto_map), ``block_configs[i].attention.no_op`` / ``.n_heads_in_group``
    (KV heads = num_attention_heads // n_heads_in_group), ``.ffn.no_op`` / ``.ffn_mult`` (width = the multiple
    of 256 at or above int(2 * ffn_mult * hidden / 3)), hidden_act, rms_norm_eps, attention_bias / mlp_bias,
    ``rope_parameters`` (get_rope), tie_word_embeddings ("lm_head." skipped when tied). Weights: q/k/v_proj load
    into qkv_proj and gate/up_proj into gate_up_proj; every other name must be a parameter of the model it
    builds (params_dict[name], a KeyError otherwise) and every parameter must be loaded.
    """
    from safetensors import safe_open
    from transformers import AutoConfig

    model = tiny_model("llama", intermediate_size=256, tie_word_embeddings=tied)
    out = export_model(model, _plan(model, attn=(1, 3), mlp=(4,)), tmp_path / "deci", format="decilm")
    raw = json.loads((out / "config.json").read_text())
    assert "_name_or_path" not in raw  # no local path leaks into the export
    assert raw["rope_theta"] == model.config.rope_parameters["rope_theta"]  # engine converters read it top-level
    config = AutoConfig.from_pretrained(out, trust_remote_code=True)
    assert config.model_type == "nemotron-nas" and config.architectures == ["DeciLMForCausalLM"]
    assert config.rope_parameters["rope_theta"] == raw["rope_theta"] and config.tie_word_embeddings == tied
    assert not config.attention_bias and not config.mlp_bias and config.hidden_act == "silu"
    hidden, heads, hd = config.hidden_size, config.num_attention_heads, config.head_dim
    shapes = {"model.embed_tokens.weight": (97, hidden), "model.norm.weight": (hidden,)}
    if not tied:
        shapes["lm_head.weight"] = (97, hidden)
    for i, block in enumerate(config.block_configs):
        p = f"model.layers.{i}."
        if not block.attention.no_op:
            kv = heads // block.attention.n_heads_in_group
            shapes.update({p + "self_attn.qkv_proj.weight": ((heads + 2 * kv) * hd, hidden),
                           p + "self_attn.o_proj.weight": (hidden, heads * hd), p + "input_layernorm.weight": (hidden,)})
        if not block.ffn.no_op:
            assert hasattr(block.ffn, "ffn_mult")
            width = _vllm_ffn_width(block.ffn.ffn_mult, hidden)
            shapes.update({p + "mlp.gate_up_proj.weight": (2 * width, hidden), p + "mlp.down_proj.weight": (hidden, width),
                           p + "post_attention_layernorm.weight": (hidden,)})
    assert [b.attention.no_op for b in config.block_configs] == [False, True, False, True, False]
    # no-op blocks carry no heads and no width (null), as Nemotron's checkpoints write them: llama.cpp's converter
    # (conversion/deci.py) reads a null n_heads_in_group as 0 heads, a set one as a full attention layer
    assert [b.attention.n_heads_in_group for b in config.block_configs] == [2, None, 2, None, 2]
    assert [b.ffn.ffn_mult for b in config.block_configs] == [6.0, 6.0, 6.0, 6.0, None]
    loaded: dict[str, int] = {}
    with safe_open(str(out / "model.safetensors"), "pt") as st:
        for name in st.keys():
            if tied and name.startswith("lm_head."):
                continue
            rows, rest = st.get_slice(name).get_shape()[0], tuple(st.get_slice(name).get_shape()[1:])
            for param, shard in ((".qkv_proj", ".q_proj"), (".qkv_proj", ".k_proj"), (".qkv_proj", ".v_proj"),
                                 (".gate_up_proj", ".gate_proj"), (".gate_up_proj", ".up_proj")):
                if shard in name:
                    name = name.replace(shard, param)
                    break
            assert name in shapes, f"vLLM builds no parameter {name}"
            assert rest == shapes[name][1:], name
            loaded[name] = loaded.get(name, 0) + rows
    assert {k: (v,) for k, v in loaded.items()} == {k: s[:1] for k, s in shapes.items()}


@pytest.mark.parametrize("attn,mlp,pattern", [
    ((0,), (), r"MLP block 0 runs with no attention block before it \(vLLM's DeciLM model"),
    ((0, 1), (0,), r"MLP block 1 runs with no attention block before it.*skip MLP block 1 too or keep attention "
                   r"block 1"),
    # every block skipped cannot reach the format: no plan may skip every attention block (hopscotch.limits)
    ((0, 1, 2, 3), (0, 1, 2), r"MLP block 3 runs with no attention block before it"),
])
def test_decilm_refuses_what_vllms_deci_model_cannot_run(attn, mlp, pattern, tmp_path):
    """vLLM's DeciLM layers start the residual stream at the first attention block they run (tests/test_vllm.py
    runs both sides of this rule in vLLM)."""
    model = tiny_model("llama", intermediate_size=256)
    with pytest.raises(ExportError, match=pattern):
        export_model(model, _plan(model, attn=attn, mlp=mlp), tmp_path / "deci", format="decilm")
    assert not (tmp_path / "deci").exists()
    with pytest.warns(UserWarning, match=r"attention block 0 is skipped: llama.cpp does not load"):
        export_model(model, _plan(model, attn=(0,), mlp=(0,)), tmp_path / "deci", format="decilm")


def test_format_problems_is_where_every_format_refuses():
    from hopscotch.export.formats import decilm_problems, format_problems, gguf_problems

    model = tiny_model("llama")  # intermediate 88: not a decilm width
    plan = _plan(model, attn=(0,), mlp=(4,))
    assert format_problems("hopscotch", model.config, plan) == format_problems("vanilla", model.config, plan) == []
    assert format_problems("decilm", model.config, plan) == decilm_problems(model.config, plan)
    assert [p.split(" (")[0] for p in decilm_problems(model.config, plan)] == [
        "intermediate_size 88", "MLP block 0 runs with no attention block before it"]
    assert format_problems("gguf", model.config, plan) == gguf_problems(model.config, plan) != []
    with pytest.raises(ExportError, match=r"unknown export format 'onnx'"):
        format_problems("onnx", model.config, plan)
