"""What the on-device routes refuse, before anything is written (``formats.format_problems``), and what the
executorch format writes. Fast: no runtime needed (tests/test_mlx.py and tests/test_executorch.py run MLX and
ExecuTorch on what is accepted: a skipped attention block 0, MLP skips for MLX, llama3 RoPE for MLX).

- MLX loads the decilm export (mlx-lm's nemotron-nas model), so decilm refuses what it cannot run as transformers
  does (``formats.mlx_problems``): a head size other than hidden / heads, a RoPE variant or activation it lacks;
- executorch (ExecuTorch's Llama model) refuses q/k norms (Qwen3), biases (Qwen2), sliding windows (Mistral),
  RoPE scaling, any MLP skip.
"""

from __future__ import annotations

import json

import pytest
import torch

from hopscotch import SkipPlan, export_model
from hopscotch.export import ExportError
from hopscotch.export.executorch_export import CHECKPOINT, PARAMS, PTE, executorch_name, lower_command
from hopscotch.export.formats import executorch_problems, format_problems, mlx_problems
from hopscotch.testing import tiny_model
from tests.helpers.cli_testing import run_cli

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}


def _plan(model, attn=(1,), mlp=()):
    g = torch.Generator().manual_seed(0)
    return SkipPlan.for_model(model, list(attn), list(mlp), 0.9 + 0.2 * torch.rand(model.config.num_hidden_layers, 4,
                                                                                    generator=g), method="test")


@pytest.mark.parametrize("arch,overrides,attn,mlp,pattern", [
    ("qwen3", {}, (1,), (), r"model_type 'qwen3' \(its layers are not Llama layers: per-head q/k norms\)"),
    ("qwen2", {}, (1,), (), r"attention biases"),
    ("mistral", {}, (1,), (), r"sliding-window attention \(window 7\)"),
    ("llama", {"rope_parameters": LLAMA3_ROPE}, (1,), (), r"rope_type 'llama3' \(only default RoPE"),
    ("llama", {"hidden_act": "gelu"}, (1,), (), r"hidden_act 'gelu'"),
    ("llama", {}, (1,), (3,), r"skipped MLP blocks \[3\] \(ExecuTorch's construct_transformer builds every"),
    ("llama", {}, (0, 1), (0,), r"skipped MLP blocks \[0\]"),
])
def test_executorch_refuses_what_its_llama_model_cannot_express(arch, overrides, attn, mlp, pattern, tmp_path):
    model = tiny_model(arch, **overrides)
    plan = _plan(model, attn, mlp)
    assert format_problems("executorch", model.config, plan) == executorch_problems(model.config, plan) != []
    with pytest.raises(ExportError, match=pattern):
        export_model(model, plan, tmp_path / "et", format="executorch")
    assert not (tmp_path / "et").exists()


@pytest.mark.parametrize("overrides,change,pattern", [
    ({"head_dim": 8}, None, r"head_dim 8 \(mlx-lm's DeciLM model uses hidden_size / num_attention_heads = 32\)"),
    ({"hidden_act": "gelu_pytorch_tanh"}, None, r"hidden_act 'gelu_pytorch_tanh' \(mlx-lm's DeciLM model knows"),
    ({}, {"rope_type": "proportional", "rope_theta": 10000.0, "factor": 2.0}, r"rope_type 'proportional' \(mlx-lm"),
    ({}, {"rope_type": "linear", "rope_theta": 10000.0}, r"rope_type 'linear' without a factor"),
])
def test_decilm_refuses_what_mlx_cannot_run(overrides, change, pattern, tmp_path):
    model = tiny_model("llama", hidden_size=128, intermediate_size=256, **overrides)
    if change is not None:  # RoPE variants transformers' Llama does not take: set after it validated the config
        model.config.rope_parameters = change
    assert len(mlx_problems(model.config)) == 1
    with pytest.raises(ExportError, match=pattern):
        export_model(model, _plan(model), tmp_path / "deci", format="decilm")
    assert not (tmp_path / "deci").exists()


def test_decilm_accepts_llama3_rope_and_what_mlx_runs():
    model = tiny_model("llama", num_layers=6, hidden_size=128, intermediate_size=256, rope_parameters=LLAMA3_ROPE)
    assert mlx_problems(model.config) == []
    assert format_problems("decilm", model.config, _plan(model, attn=(0, 5), mlp=(0, 2))) == []


def test_executorch_export_writes_executorchs_llama_checkpoint(tmp_path):
    """model.pth under ExecuTorch's names, nothing of a skipped attention block, the scalars folded into wo / w2
    as into o_proj / down_proj; params.json marks the skipped blocks; no .pte without an ExecuTorch python."""
    model = tiny_model("llama", num_layers=4)
    plan = _plan(model, attn=(0, 2))
    out = export_model(model, plan, tmp_path / "et", format="executorch")
    state = torch.load(out / CHECKPOINT, weights_only=True)
    params = json.loads((out / PARAMS).read_text())
    assert params["layer_types"] == ["skip_attention", "full_attention", "skip_attention", "full_attention"]
    assert (params["dim"], params["n_heads"], params["n_kv_heads"], params["hidden_dim"]) == (64, 4, 2, 88)
    assert params["use_hf_rope"] and params["n_layers"] == 4 and params["vocab_size"] == 97
    assert not [n for n in state if n.startswith(("layers.0.attention", "layers.2.attention"))]
    assert "layers.1.attention.wq.weight" in state and "output.weight" in state and not (out / PTE).exists()
    deci = export_model(model, plan, tmp_path / "deci", format="vanilla")  # same fold, HF names
    from safetensors.torch import load_file

    hf = load_file(deci / "model.safetensors")
    for name, t in hf.items():
        if executorch_name(name) in state:
            assert torch.equal(state[executorch_name(name)], t), name
    assert len(state) == len([n for n in hf if not n.startswith(("model.layers.0.self_attn", "model.layers.0.input",
                                                                 "model.layers.2.self_attn", "model.layers.2.input"))])


def test_executorch_export_refuses_a_missing_python_before_writing(tmp_path):
    model = tiny_model("llama", num_layers=4)
    with pytest.raises(ExportError, match=r"ExecuTorch python .*nope/bin/python: no such file"):
        export_model(model, _plan(model), tmp_path / "et", format="executorch",
                     executorch_python=tmp_path / "nope" / "bin" / "python")
    with pytest.raises(ExportError, match=r"executorch_context 1: expected an int >= 2"):
        export_model(model, _plan(model), tmp_path / "et", format="executorch", executorch_context=1)
    assert not (tmp_path / "et").exists()


def test_cli_export_executorch_prints_the_pte_command(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HOPSCOTCH_EXECUTORCH_PYTHON", raising=False)
    from hopscotch.models import load_model

    plan = _plan(load_model(tiny_dir, with_tokenizer=False))
    plan.save(tmp_path / "plan.json")
    out = tmp_path / "et"
    code, stdout, err = run_cli(capsys, "export", "--model", tiny_dir, "--plan", tmp_path / "plan.json", "--out", out,
                                "--format", "executorch", "--executorch-context", 64)
    assert code == 0, err
    assert (out / CHECKPOINT).is_file() and (out / PARAMS).is_file() and (out / "tokenizer.json").is_file()
    assert " ".join(lower_command("EXECUTORCH_VENV/bin/python", [out], context=64)) in stdout
    code, _, err = run_cli(capsys, "export", "--model", tiny_dir, "--plan", tmp_path / "plan.json", "--out", out,
                           "--format", "executorch", "--overwrite", "--executorch-python", tmp_path / "no-python")
    assert code == 2 and "no-python: no such file" in err and (out / CHECKPOINT).is_file()
