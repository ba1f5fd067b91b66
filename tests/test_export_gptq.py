"""A GPTQ checkpoint with the scalars folded into its scales (``export/gptq.py``): nothing requantized.

The first tests build GPTQ checkpoints of tiny Llamas (tests/helpers/gptq_testing.py: round-to-nearest 4-bit codes
in GPTQ's packing) and dequantize them with that module's own reader, so they need no GPTQ library. The fold's error
bound: a weight is ``s (q - z)``; scaling s by f and rounding it to float16 errs by at most 2^-11 |f s|, so each
folded weight is within 2^-11 of its exact value, relative, and a skipped block's is exactly zero.

The last test loads a real GPTQ SmolLM2 with gptqmodel (``HOPSCOTCH_GPTQ_DIR``, made by
benchmarks/gptq_checkpoint.py, in a venv with gptqmodel); it skips without them.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from hopscotch import SkipPlan, apply_plan, unpatch_model
from hopscotch.export import ExportError
from hopscotch.export.fold import folded_weights
from hopscotch.export.gptq import export_gptq, fold_error
from hopscotch.plan import PlanError
from hopscotch.testing import tiny_model
from tests.helpers.gptq_testing import LINEARS, unpack as _unpack, write_checkpoint

safetensors_torch = pytest.importorskip("safetensors.torch")
GROUP = 32
FP16_ROUNDING = 2.0 ** -11


def _write_checkpoint(model, path, method="gptq") -> dict[str, torch.Tensor]:
    """A GPTQ checkpoint of ``model`` at ``path`` (asymmetric, group GROUP); its dequantized weights by HF name."""
    return write_checkpoint(model, path, GROUP, method=method)


def _read(path) -> dict[str, torch.Tensor]:
    return safetensors_torch.load_file(str(path / "model.safetensors"))


def _modules(sd: dict[str, torch.Tensor], suffix: str) -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for name, t in sd.items():
        module, leaf = name.rsplit(".", 1)
        if module.endswith(suffix):
            out.setdefault(module, {})[leaf] = t
    return out


@pytest.fixture
def gptq_tiny(tmp_path):
    """(checkpoint dir, model holding its dequantized weights, a plan with 2 attention blocks skipped)."""
    model = tiny_model("llama", num_layers=5, intermediate_size=96)
    dequant = _write_checkpoint(model, tmp_path / "gptq")
    model.load_state_dict(dequant, strict=False)  # the model the checkpoint stands for
    g = torch.Generator().manual_seed(1)
    plan = SkipPlan.for_model(model, skipped_attention=[1, 3], scalars=0.9 + 0.2 * torch.rand(5, 4, generator=g))
    return tmp_path / "gptq", model, plan


def test_folded_scales_are_the_exact_products_up_to_float16_rounding(gptq_tiny, tmp_path):
    src, model, plan = gptq_tiny
    out = export_gptq(src, plan, tmp_path / "thin")
    err = fold_error(src, plan, out)
    assert err["dtype"] == "float16" and err["bound"] == FP16_ROUNDING
    assert 0 < err["max_rel"] <= FP16_ROUNDING and err["other_tensors_equal"]
    a, b = _read(src), _read(out)
    changed = sorted(k for k in a if not torch.equal(a[k], b[k]))
    assert changed and all(k.endswith((".o_proj.scales", ".down_proj.scales")) for k in changed)
    assert json.loads((out / "config.json").read_text()) == json.loads((src / "config.json").read_text())
    assert SkipPlan.load(out / "hopscotch_plan").skipped_attention == [1, 3]


def test_folded_checkpoint_dequantizes_to_the_folded_weights(gptq_tiny, tmp_path):
    src, model, plan = gptq_tiny
    out = export_gptq(src, plan, tmp_path / "thin")
    _, exact = folded_weights(model, plan, keep_skipped=True)
    folded = _read(out)
    for suffix in ("self_attn.o_proj", "mlp.down_proj"):
        for module, t in _modules(folded, suffix).items():
            w, ref = _unpack(t), exact(f"{module}.weight").double()
            if "self_attn" in module and int(module.split(".")[2]) in plan.skipped_attention:
                assert (w == 0).all()
                continue
            assert ((w - ref).abs() <= FP16_ROUNDING * ref.abs() + 1e-12).all(), module
    # the folded checkpoint, dequantized and run as a plain model, is the patched model (up to the rounding)
    thin = tiny_model("llama", num_layers=5, intermediate_size=96)
    thin.load_state_dict({**{k: v for k, v in model.state_dict().items() if "scalar" not in k},
                          **{f"{m}.weight": _unpack(t).float() for s in LINEARS for m, t in _modules(folded, s).items()}},
                         strict=False)
    ids = torch.randint(3, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    apply_plan(model, plan)
    with torch.no_grad():
        patched, plain = model(ids).logits, thin(ids).logits
    unpatch_model(model)
    assert (patched - plain).abs().max() < 2e-3 * patched.abs().max()
    assert torch.equal(patched.argmax(-1), plain.argmax(-1))


def test_export_gptq_refuses_what_it_cannot_fold(gptq_tiny, tmp_path):
    src, model, plan = gptq_tiny
    awq = tmp_path / "awq"
    _write_checkpoint(tiny_model("llama", num_layers=5, intermediate_size=96), awq, method="awq")
    with pytest.raises(ExportError, match=r"quantization method 'awq'\); expected 'gptq'"):
        export_gptq(awq, plan, tmp_path / "out1")
    with pytest.raises(ExportError, match="holds no config.json"):
        export_gptq(tmp_path, plan, tmp_path / "out2")
    other = SkipPlan.for_model(tiny_model("llama", num_layers=6), skipped_attention=[1])
    with pytest.raises(PlanError, match="6-layer"):
        export_gptq(src, other, tmp_path / "out3")
    export_gptq(src, plan, tmp_path / "out4")
    with pytest.raises(ExportError, match="overwrite"):
        export_gptq(src, plan, tmp_path / "out4")
    assert not (tmp_path / "out1").exists()


def test_cli_exports_gptq_without_loading_the_model(gptq_tiny, tmp_path, capsys):
    from tests.helpers.cli_testing import run_cli

    src, model, plan = gptq_tiny
    plan.save(tmp_path / "plan.json")
    code, out, err = run_cli(capsys, "export", "--plan", tmp_path / "plan.json", "--model", src, "--format", "gptq",
                             "--out", tmp_path / "thin", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["format"] == "gptq" and 0 < doc["fold_error"]["max_rel"] <= FP16_ROUNDING
    assert torch.equal(_read(tmp_path / "thin")["model.layers.1.self_attn.o_proj.scales"],
                       torch.zeros(64 // GROUP, 64, dtype=torch.float16))
    code, _, err = run_cli(capsys, "export", "--plan", tmp_path / "plan.json", "--format", "gptq", "--out",
                           tmp_path / "x")
    assert code != 0 and "give its directory as --model DIR" in err


GPTQ_DIR = os.environ.get("HOPSCOTCH_GPTQ_DIR")


@pytest.mark.slow
@pytest.mark.skipif(not GPTQ_DIR, reason="HOPSCOTCH_GPTQ_DIR (a GPTQ SmolLM2, benchmarks/gptq_checkpoint.py) not set")
def test_gptqmodel_loads_the_folded_checkpoint_with_the_patched_tokens(tmp_path):
    """Searched on the GPTQ weights (k = 2, Wikipedia calibration), folded, loaded by gptqmodel: greedy tokens
    equal to the patched GPTQ model's, with and without the skipped blocks' computation, up to bfloat16 ties.

    gptqmodel's CPU kernel runs in bfloat16, where the patched model (scalars as separate multiplications) and the
    folded one (scalars inside the dequantized weight) round differently: on 2026-12-06 the tokens parted on 2 of 3
    prompts, each time where the two best logits were within one bfloat16 step in both models. So where the tokens
    part, both models' top-2 logits must be within 2 bfloat16 steps of each other, and every logit within 8 steps
    of the other model's (measured: up to 4.4); equal tokens elsewhere."""
    gptqmodel = pytest.importorskip("gptqmodel")
    from transformers import AutoTokenizer

    from hopscotch.search import search
    from hopscotch.tasks import prepare_task

    def load(path):
        return gptqmodel.GPTQModel.load(str(path), backend=gptqmodel.BACKEND.TORCH, device="cpu",
                                        dtype=torch.bfloat16).model.eval()

    model, tok = load(GPTQ_DIR), AutoTokenizer.from_pretrained(GPTQ_DIR)
    data = prepare_task(model, tok, "wikipedia", calibration=8, evaluation=4, wiki_blocks=0, text_blocks=0,
                        seq_len=128, progress=False)
    plan = search(model, data.calibration, num_skip=2, method="hopscotch-fast", final_epochs=1, generic_weight=0,
                  progress=False)
    unpatch_model(model)
    out = export_gptq(GPTQ_DIR, plan, tmp_path / "thin")
    err = fold_error(GPTQ_DIR, plan, out)
    assert err["max_rel"] <= err["bound"] and err["other_tensors_equal"]
    prompts = ["The capital of France is", "Photosynthesis is the process by which", "def fibonacci(n):"]

    def greedy(m):
        toks = []
        for p in prompts:
            ids = tok(p, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                toks.append(m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16,
                                       do_sample=False)[0, ids.shape[1]:].tolist())
        return toks

    def agree_up_to_ties(m, got, want):
        for p, g, w in zip(prompts, got, want):
            if g == w:
                continue
            ids = tok(p, return_tensors="pt")["input_ids"]
            part = next(i for i, (x, y) in enumerate(zip(g, w)) if x != y)
            prefix = torch.cat([ids[0], torch.tensor(w[:part])]).unsqueeze(0)
            with torch.no_grad():
                la, lb = (mm(prefix).logits[0, -1].float() for mm in (model, m))
            step = 2.0 ** (torch.floor(torch.log2(la.abs().max())) - 7)  # one bfloat16 step at the top logit
            for lg in (la, lb):
                top = lg.topk(2).values
                assert top[0] - top[1] <= 2 * step, (p, part, top.tolist(), float(step))
            assert (la - lb).abs().max() <= 8 * step, (p, part, float((la - lb).abs().max()), float(step))

    apply_plan(model, plan)
    want = greedy(model)
    thin = load(out)
    agree_up_to_ties(thin, greedy(thin), want)
    apply_plan(thin, SkipPlan.for_model(thin, skipped_attention=plan.skipped_attention))
    agree_up_to_ties(thin, greedy(thin), want)
