"""format="gguf": llama.cpp's deci architecture. The metadata and tensors read back, the refusals, and the proof
in llama.cpp itself (llama-cpp-python, installed by scripts/install_llama_cpp.sh): logits and greedy generations
of the exported file against the patched hopscotch model.

The llama.cpp tests skip when llama.cpp is not installed, unless HOPSCOTCH_REQUIRE_LLAMA_CPP=1 (CI), where they fail.

Tolerances, from measurement (float32 export, llama.cpp with a float32 KV cache and flash attention off):
- llama.cpp vs transformers on the *same* weights (the full model, or the thin model's folded weights loaded as
  a ``vanilla`` export): max |diff| 4.7e-5 (full) and 8.8e-5 (thin) on SmolLM2 logits of magnitude ~30, i.e.
  float32 summation order over 30 layers. LLAMA_TOL = 5e-4 leaves 5x room for another CPU's SIMD width.
- llama.cpp vs the *patched* thin model adds the fold's own error (RMSNorm is scale-invariant only up to eps,
  see test_export.FOLD_TOL): 4.0e-3 between the patched model and its folded weights in transformers, 3.9e-3
  for llama.cpp. So llama.cpp must stay within that fold error + LLAMA_TOL of the patched model.
Greedy generations (32 tokens) agree exactly, in f32, f16 and q8_0 (q8_0 logits differ by up to 2.7).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from hopscotch import SkipPlan, apply_plan, export_model, unpatch_model
from hopscotch.bench.llama_cpp import LlamaCpp, LlamaCppMissing, require_llama_cpp
from hopscotch.export import ExportError
from hopscotch.hf_compat import FROM_PRETRAINED_KWARGS
from tests.helpers.model_testing import tiny_model

gguf = pytest.importorskip("gguf")

LLAMA_TOL = 5e-4
THIN = [6, 7, 8, 25]


def _need_llama_cpp():
    try:
        require_llama_cpp()
    except LlamaCppMissing as exc:
        if os.environ.get("HOPSCOTCH_REQUIRE_LLAMA_CPP") == "1":
            pytest.fail(f"HOPSCOTCH_REQUIRE_LLAMA_CPP=1 but {exc}")
        pytest.skip(str(exc))


def _tokenizer_gguf(path, vocab: int, template: str = "{{ messages[0]['content'] }}"):
    """A GGUF file holding only a tokenizer (byte-level BPE with ``vocab`` tokens) and a chat template."""
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([f"<t{i}>" if i < 3 else chr(0x100 + i) for i in range(vocab)])
    w.add_token_types([3, 3, 3] + [1] * (vocab - 3))
    w.add_token_merges([f"{chr(0x104)} {chr(0x105)}"])
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_chat_template(template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return path


def _plan(model, attn=(1, 3), mlp=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    scalars = 0.9 + 0.2 * torch.rand(model.config.num_hidden_layers, 4, generator=g)
    return SkipPlan.for_model(model, list(attn), list(mlp), scalars, method="test")


def _read(path):
    r = gguf.GGUFReader(path)
    return r, {k: f.contents() for k, f in r.fields.items()}, {t.name: t for t in r.tensors}


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's adjacent-pair row order back to transformers' rotate-half order, head by head."""
    d = w.shape[0] // n_heads
    idx = np.concatenate([h * d + np.r_[0:d:2, 1:d:2] for h in range(n_heads)])
    return w[idx]


def test_gguf_metadata_and_tensors_read_back(tmp_path):
    model = tiny_model("llama", intermediate_size=96)
    plan = _plan(model, attn=(1, 3))
    tok = _tokenizer_gguf(tmp_path / "tok.gguf", 97, template="T")
    out = export_model(model, plan, tmp_path / "m.gguf", format="gguf", dtype="f32", gguf_tokenizer=tok)
    r, kv, tensors = _read(out)
    assert kv["general.architecture"] == "deci" and kv["deci.block_count"] == 5
    assert kv["deci.attention.head_count"] == [4, 0, 4, 0, 4]
    assert kv["deci.attention.head_count_kv"] == [2, 0, 2, 0, 2]
    assert kv["deci.feed_forward_length"] == [96] * 5
    assert kv["deci.attention.key_length"] == kv["deci.rope.dimension_count"] == 16
    assert kv["deci.rope.freq_base"] == pytest.approx(model.config.rope_parameters["rope_theta"])
    assert kv["tokenizer.chat_template"] == "T" and len(kv["tokenizer.ggml.tokens"]) == 97
    assert kv["hopscotch.skipped_attention"] == "[1, 3]"
    per_layer = {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                 "ffn_down"}
    expected = {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{i}.{p}.weight" for i in range(5) for p in per_layer if i not in (1, 3) or p.startswith("ffn")}
    assert set(tensors) == expected
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in tensors.values())

    sd = model.state_dict()
    q = np.asarray(tensors["blk.2.attn_q.weight"].data).reshape(64, 64)
    k = np.asarray(tensors["blk.2.attn_k.weight"].data).reshape(32, 64)
    np.testing.assert_array_equal(_unpermute(q, 4), sd["model.layers.2.self_attn.q_proj.weight"].numpy())
    np.testing.assert_array_equal(_unpermute(k, 2), sd["model.layers.2.self_attn.k_proj.weight"].numpy())
    np.testing.assert_array_equal(np.asarray(tensors["blk.2.attn_v.weight"].data).reshape(32, 64),
                                  sd["model.layers.2.self_attn.v_proj.weight"].numpy())
    from hopscotch.export.fold import output_scales

    attn_scale, mlp_scale = output_scales(plan.scalar_tensor(), plan.skipped_attention, [])
    o = np.asarray(tensors["blk.2.attn_output.weight"].data).reshape(64, 64)
    np.testing.assert_allclose(o, sd["model.layers.2.self_attn.o_proj.weight"].numpy() * attn_scale[2], rtol=1e-6)
    down = np.asarray(tensors["blk.3.ffn_down.weight"].data).reshape(64, 96)
    np.testing.assert_allclose(down, sd["model.layers.3.mlp.down_proj.weight"].numpy() * mlp_scale[3], rtol=1e-6)


@pytest.mark.parametrize("dtype,two_d,file_type,tol", [
    ("f32", "F32", 0, 0.0), ("f16", "F16", 1, 1e-3), ("bf16", "BF16", 32, 8e-3), ("q8_0", "Q8_0", 7, 2e-2)])
def test_gguf_weight_types(dtype, two_d, file_type, tol, tmp_path):
    model = tiny_model("llama")  # intermediate 88: ffn_down's rows (88) are no multiple of q8_0's 32-block
    tok = _tokenizer_gguf(tmp_path / "tok.gguf", 97)
    out = export_model(model, SkipPlan.for_model(model, [2]), tmp_path / "m.gguf", format="gguf", dtype=dtype,
                       gguf_tokenizer=tok)
    _, kv, tensors = _read(out)
    assert kv["general.file_type"] == file_type
    types = {n: t.tensor_type.name for n, t in tensors.items()}
    assert types["blk.0.attn_norm.weight"] == "F32" and types["blk.0.attn_q.weight"] == two_d
    assert types["blk.0.ffn_down.weight"] == ("F16" if dtype == "q8_0" else two_d)
    t = tensors["blk.0.ffn_gate.weight"]
    got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(88, 64)
    np.testing.assert_allclose(got, model.state_dict()["model.layers.0.mlp.gate_proj.weight"].numpy(), atol=tol)


@pytest.mark.parametrize("arch,attn,mlp,kwargs,pattern", [
    ("qwen2", (1,), (), {}, r"attention biases"),
    ("qwen3", (1,), (), {}, r"model_type 'qwen3' .*per-head q/k norms"),
    ("mistral", (1,), (), {}, r"sliding-window attention \(window 7\)"),
    ("llama", (1,), (2,), {}, r"skipped MLP blocks \[2\] whose attention is kept"),
    ("llama", (4,), (4,), {}, r"skipped MLP block in the last layer"),
    ("llama", (0,), (), {}, r"skipped attention block 0 \(llama.cpp reads the head size"),
    ("llama", (1,), (), {"dtype": "q4_k"}, r"dtype 'q4_k' cannot be written to gguf; expected one of f32, f16"),
])
def test_gguf_refuses_what_llama_cpp_cannot_run(arch, attn, mlp, kwargs, pattern, tmp_path):
    model = tiny_model(arch)
    tok = _tokenizer_gguf(tmp_path / "tok.gguf", 97)
    with pytest.raises(ExportError, match=pattern):
        export_model(model, _plan(model, attn, mlp), tmp_path / "m.gguf", format="gguf", gguf_tokenizer=tok,
                     **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok.gguf"]


def test_gguf_refuses_a_foreign_tokenizer_and_bad_destinations(tmp_path):
    model = tiny_model("llama")
    plan = SkipPlan.for_model(model, [1])
    with pytest.raises(ExportError, match=r"carries the tokenizer over from a GGUF file.*pass gguf_tokenizer="):
        export_model(model, plan, tmp_path / "m.gguf", format="gguf")  # it names the argument export_model takes
    with pytest.raises(ExportError, match=r"gguf_tokenizer \S*no\.gguf: no such file; expected the GGUF file"):
        export_model(model, plan, tmp_path / "m.gguf", format="gguf", gguf_tokenizer=tmp_path / "no.gguf")
    with pytest.raises(ExportError, match=r"has 50 tokenizer tokens, the model 97"):
        export_model(model, plan, tmp_path / "m.gguf", format="gguf",
                     gguf_tokenizer=_tokenizer_gguf(tmp_path / "small.gguf", 50))
    tok = _tokenizer_gguf(tmp_path / "tok.gguf", 97)
    with pytest.raises(ExportError, match=r"writes one file: .*should end in .gguf"):
        export_model(model, plan, tmp_path / "dir", format="gguf", gguf_tokenizer=tok)
    (tmp_path / "m.gguf").write_text("mine")
    with pytest.raises(ExportError, match=r"exists; pass overwrite=True"):
        export_model(model, plan, tmp_path / "m.gguf", format="gguf", gguf_tokenizer=tok)
    assert (tmp_path / "m.gguf").read_text() == "mine"
    with pytest.raises(ExportError, match=r"dtype 'q8_0' is for format='gguf' only"):
        export_model(model, plan, tmp_path / "h", dtype="q8_0")


def test_gguf_interrupted_export_leaves_nothing(tmp_path, monkeypatch):
    model = tiny_model("llama")
    tok = _tokenizer_gguf(tmp_path / "tok.gguf", 97)
    calls = {"n": 0}
    real = gguf.GGUFWriter.write_tensor_data

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("interrupted mid-export")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", failing)
    with pytest.raises(KeyboardInterrupt):
        export_model(model, SkipPlan.for_model(model, [1]), tmp_path / "m.gguf", format="gguf", gguf_tokenizer=tok)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok.gguf"]


def test_bench_costs_count_the_weights_read_and_the_kept_kv_cache(tmp_path):
    from hopscotch.bench.llama_cpp import decode_bytes, gguf_costs, prompt_flops

    model = tiny_model("llama")  # untied head: one embedding row read per token, the output matrix in full
    tok = _tokenizer_gguf(tmp_path / "tok.gguf", 97)
    out = export_model(model, SkipPlan.for_model(model, [1, 3]), tmp_path / "m.gguf", format="gguf", dtype="f16",
                       gguf_tokenizer=tok)
    costs = gguf_costs(out)
    _, _, tensors = _read(out)
    emb = int(tensors["token_embd.weight"].n_bytes)
    assert costs["weight_bytes"] == sum(int(t.n_bytes) for t in tensors.values()) - emb + emb // 97
    assert (costs["kv_layers"], costs["kv_width"], costs["q_width"]) == (3, 3 * 2 * 16, 3 * 4 * 16)
    assert decode_bytes(costs, 100) == costs["weight_bytes"] + 2 * 96 * 100 * 2  # K and V, f16
    matmul_params = sum(int(t.n_elements) for n, t in tensors.items() if n.endswith(("attn_q.weight", "attn_k.weight",
                        "attn_v.weight", "attn_output.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight",
                        "output.weight")))
    assert prompt_flops(costs, 9) == 2 * matmul_params + 4 * 192 * 5


@pytest.mark.engine
def test_tiny_gguf_runs_in_llama_cpp_like_the_patched_model(tmp_path):
    """Grouped-query attention, an untied head, skips and scalars, through llama.cpp (no real model needed)."""
    _need_llama_cpp()
    from transformers import AutoModelForCausalLM

    model = tiny_model("llama", intermediate_size=96)
    plan = _plan(model, attn=(1, 3), mlp=(3,))  # layer 3 fully skipped: the one MLP skip llama.cpp runs right
    ids = torch.randint(3, 97, (1, 12), generator=torch.Generator().manual_seed(0))
    out = export_model(model, plan, tmp_path / "m.gguf", format="gguf", dtype="f32",
                       gguf_tokenizer=_tokenizer_gguf(tmp_path / "tok.gguf", 97))
    # as hopscotch's loaders do: no hub kernels (transformers >= 5.25 fetches them by default; tests reach no hub)
    folded = AutoModelForCausalLM.from_pretrained(export_model(model, plan, tmp_path / "v", format="vanilla"),
                                                  **FROM_PRETRAINED_KWARGS)
    apply_plan(model, plan)
    with torch.no_grad():
        ref, ref_folded = model(ids).logits[0].numpy(), folded(ids).logits[0].numpy()
    with LlamaCpp(out, n_ctx=64, exact=True, logits_all=True) as llm:
        got = llm.logits(ids[0].tolist())
    np.testing.assert_allclose(got, ref_folded, atol=LLAMA_TOL, rtol=0)
    np.testing.assert_allclose(got, ref, atol=np.abs(ref - ref_folded).max() + LLAMA_TOL, rtol=0)


@pytest.fixture(scope="module")
def smollm2_gguf(module_tmp):
    """The packaged SmolLM2 exported to f32 GGUF, full and thin (THIN skipped, trained-looking scalars); the
    patched model's logits and 32 greedy tokens for a chat prompt, and the thin model's folded-weight logits."""
    _need_llama_cpp()
    from transformers import AutoModelForCausalLM

    from hopscotch.models import load_model

    try:
        model, tok = load_model(None)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    d = module_tmp("gguf")
    g = torch.Generator().manual_seed(1)
    plans = {"full": SkipPlan.for_model(model, []),
             "thin": SkipPlan.for_model(model, THIN, [], 0.9 + 0.2 * torch.rand(30, 4, generator=g), method="test")}
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the largest planet in the solar system?"}],
                                     tokenize=False, add_generation_prompt=True)
    ids = tok([prompt], return_tensors="pt")["input_ids"]
    cases = {"prompt": prompt, "ids": ids[0].tolist()}
    for name, plan in plans.items():
        case = {name: export_model(model, plan, d / f"{name}-f32.gguf", format="gguf", dtype="f32")}
        if name == "thin":
            for dt in ("f16", "q8_0"):
                case[dt] = export_model(model, plan, d / f"{name}-{dt}.gguf", format="gguf", dtype=dt)
            van = AutoModelForCausalLM.from_pretrained(export_model(model, plan, d / "van", format="vanilla"),
                                                      **FROM_PRETRAINED_KWARGS)
            with torch.no_grad():
                case["folded"] = van(ids).logits[0].numpy()
        apply_plan(model, plan)
        with torch.no_grad():
            case["logits"] = model(ids).logits[0].numpy()
            case["greedy"] = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32,
                                            do_sample=False)[0, ids.shape[1]:].tolist()
        unpatch_model(model)
        cases[name] = case
    return cases


@pytest.mark.slow
@pytest.mark.engine
@pytest.mark.parametrize("which", ["full", "thin"])
def test_smollm2_gguf_matches_the_patched_model_in_llama_cpp(smollm2_gguf, which):
    case = smollm2_gguf[which]
    ids = smollm2_gguf["ids"]
    with LlamaCpp(case[which], n_ctx=256, exact=True, logits_all=True) as llm:
        assert llm.tokenize(smollm2_gguf["prompt"]) == ids  # the tokenizer came over with the file
        meta = llm.metadata()
        got = llm.logits(ids)
        greedy = llm.greedy(ids, 32)
    assert meta["general.architecture"] == "deci" and "im_start" in meta["tokenizer.chat_template"]
    ref = case["logits"]
    if which == "full":  # no scalars: same weights, only summation order differs
        np.testing.assert_allclose(got, ref, atol=LLAMA_TOL, rtol=0)
    else:
        np.testing.assert_allclose(got, case["folded"], atol=LLAMA_TOL, rtol=0)
        np.testing.assert_allclose(got, ref, atol=np.abs(ref - case["folded"]).max() + LLAMA_TOL, rtol=0)
    assert greedy == case["greedy"]


@pytest.mark.slow
@pytest.mark.engine
@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
def test_smollm2_thin_gguf_generates_the_same_in_f16_and_q8_0(smollm2_gguf, dtype):
    case = smollm2_gguf["thin"]
    with LlamaCpp(case[dtype], n_ctx=256) as llm:  # llama.cpp's defaults: f16 KV cache
        assert llm.greedy(smollm2_gguf["ids"], 32) == case["greedy"]


@pytest.mark.slow
def test_cli_exports_the_packaged_model_to_gguf(tmp_path, capsys):
    import json

    from hopscotch.cli import main
    from hopscotch.models import load_model

    model = load_model(None, with_tokenizer=False)
    SkipPlan.for_model(model, THIN).save(tmp_path / "plan.json")
    assert main(["export", "--plan", str(tmp_path / "plan.json"), "--out", str(tmp_path / "thin.gguf"),
                 "--format", "gguf", "--save-dtype", "q8_0", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "gguf" and out["files"] == ["thin.gguf"] and 1.2e8 < out["weight_bytes"] < 1.6e8
    _, kv, tensors = _read(tmp_path / "thin.gguf")
    assert kv["deci.attention.head_count"][6:9] == [0, 0, 0] and "blk.6.attn_q.weight" not in tensors
    assert main(["export", "--plan", str(tmp_path / "plan.json"), "--out", str(tmp_path / "thin.gguf"),
                 "--format", "gguf"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
