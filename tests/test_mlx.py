"""The decilm export in MLX (mlx[cpu] and mlx-lm, scripts/install_mlx.sh, run in their own venv through
tests/helpers/runtime_testing.py and mlx_worker.py): SmolLM2 with the README's 4-block plan, loaded by
``mlx_lm.load`` as written.

- its greedy 32 tokens equal the patched model's on 4 prompts, and the log-probability MLX gives each token is
  within LOGPROB_TOL of the patched model's;
- MLX's own prompt cache (``make_prompt_cache``: mlx-lm's DeciLM model makes one ``KVCache`` per attention layer it
  built) holds 26 entries, one per kept attention block, each with every token of its sequence;
- ``mlx_lm.convert``'s 4-bit copy of the thin export loads, holds 4-bit weights, and generates with 26 cache entries;
- what the decilm format accepts runs in MLX: a tiny model with all of layer 0 skipped, an MLP-only skip, a skipped
  last attention block, and llama3 RoPE scaling, gives the patched model's tokens.

They skip when MLX's venv is absent, unless HOPSCOTCH_REQUIRE_MLX=1 (CI), where they fail.

LOGPROB_TOL: MLX computes in float32 on the CPU, as the reference does; only the order of summation differs. The
largest difference measured over the 4 x 32 steps is given in docs/ENGINES.md (MLX section); a scalar left out of
the fold moves these log-probabilities by 1.7e-3 and more (tests/test_vllm.py): 1e-3 catches a wrong fold.
"""

from __future__ import annotations

import json

import pytest
import torch

from hopscotch import SkipPlan, export_model
from hopscotch.testing import tiny_model
from tests.helpers import DATA
from tests.helpers.runtime_testing import (compare_greedy, need_runtime, patched_greedy, run_worker,
                                           smollm2_with_prompts)

pytestmark = [pytest.mark.slow, pytest.mark.engine]

LOGPROB_TOL = 1e-3
NEW_TOKENS = 32
PROMPTS = ["What is the largest planet in the solar system?", "Write a haiku about autumn leaves.",
           "Explain in two sentences why the sky is blue.", "List three uses of copper."]
README_PLAN = DATA / "smollm2_learned_plan"  # attention blocks 6 7 25 29


@pytest.fixture(scope="module")
def smollm2_mlx(module_tmp):
    """The README plan's decilm export of the packaged SmolLM2, the patched model's reference, MLX's run of it and
    of its 4-bit conversion."""
    need_runtime("mlx")  # before loading anything: skip (or fail under HOPSCOTCH_REQUIRE_MLX=1) at once
    model, tok, prompts = smollm2_with_prompts(PROMPTS)
    d = module_tmp("mlx")
    plan = SkipPlan.load(README_PLAN)
    export = export_model(model, plan, d / "decilm", format="decilm", tokenizer=tok)
    run = run_worker("mlx", {"model": str(export), "prompts": prompts, "max_tokens": NEW_TOKENS,
                             "convert_4bit": str(d / "decilm-4bit")}, work_dir=d)
    return {"model": model, "plan": plan, "prompts": prompts, "run": run,
            "refs": patched_greedy(model, plan, prompts, NEW_TOKENS)}


def test_mlx_generates_what_the_patched_model_does(smollm2_mlx):
    run = smollm2_mlx["run"]
    assert run["model_type"] == "nemotron-nas" and run["weight_dtype"] == "mlx.core.float32"
    diffs = compare_greedy(run["results"], smollm2_mlx["refs"], LOGPROB_TOL, PROMPTS)
    print(f"MLX {run['versions']}: max |logprob diff| per prompt {[f'{d:.1e}' for d in diffs]}")
    assert len(diffs) == len(PROMPTS) >= 4


def test_mlx_caches_only_the_kept_attention_blocks(smollm2_mlx):
    """mlx-lm's own cache objects: one KVCache per kept attention block (26 of 30), each holding the last
    prompt's tokens and the generated ones (keys [1, kv heads, capacity, head_dim])."""
    case = smollm2_mlx
    cfg, plan, cache = case["model"].config, case["plan"], case["run"]["cache"]
    kept = cfg.num_hidden_layers - len(plan.skipped_attention)
    assert len(plan.skipped_attention) == 4 and len(cache) == kept == 26
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    tokens = len(case["prompts"][-1]) + NEW_TOKENS - 1  # the last generated token is never fed back
    for entry in cache:
        assert entry["class"] == "KVCache" and entry["offset"] == tokens
        assert entry["keys_shape"][:2] == [1, cfg.num_key_value_heads] and entry["keys_shape"][3] == head_dim
        assert entry["keys_shape"][2] >= tokens and entry["values_shape"] == entry["keys_shape"]
        assert entry["dtype"] == "mlx.core.float32"


def test_mlx_4bit_conversion_of_the_thin_export(smollm2_mlx):
    """``mlx_lm.convert(quantize=True, q_bits=4)`` on the decilm export: loads, generates, still 26 cache entries."""
    q = smollm2_mlx["run"]["quantized"]
    assert q["quantization"]["bits"] == 4 and q["quantization"]["group_size"] == 64
    assert len(q["cache"]) == 26
    refs = smollm2_mlx["refs"]
    assert all(len(r["tokens"]) == NEW_TOKENS for r in q["results"])
    agree = [sum(a == b for a, b in zip(r["tokens"], ref["tokens"])) for r, ref in zip(q["results"], refs)]
    first = sum(r["tokens"][0] == ref["tokens"][0] for r, ref in zip(q["results"], refs))
    print(f"MLX 4-bit: {q['bytes'] / 1e6:.1f} MB of weights; tokens equal to the float model's per prompt: {agree}; "
          f"first token equal on {first} of {len(refs)}")
    # 4-bit weights change the model; it must still be the model: most first answers the same
    assert first >= len(refs) // 2


@pytest.mark.filterwarnings("ignore:attention block 0 is skipped")
def test_what_decilm_accepts_mlx_runs(tmp_path):
    """A tiny Llama with llama3 RoPE scaling; its plan skips all of layer 0, the MLP of layer 2 alone and the last
    attention block: the decilm export accepts it, and MLX gives the patched model's tokens."""
    need_runtime("mlx")
    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    model = tiny_model("llama", num_layers=6, hidden_size=128, intermediate_size=256, rope_parameters=rope)
    g = torch.Generator().manual_seed(0)
    plan = SkipPlan.for_model(model, [0, 5], [0, 2], 0.9 + 0.2 * torch.rand(6, 4, generator=g), method="test")
    out = export_model(model, plan, tmp_path / "tiny-decilm", format="decilm")
    assert json.loads((out / "config.json").read_text())["rope_scaling"]["rope_type"] == "llama3"
    prompts = [torch.randint(3, 97, (n,), generator=g).tolist() for n in (5, 40, 70)]  # past the original 32
    run = run_worker("mlx", {"model": str(out), "prompts": prompts, "max_tokens": 16, "tokenizer": False},
                     work_dir=tmp_path)
    compare_greedy(run["results"], patched_greedy(model, plan, prompts, 16), LOGPROB_TOL)
    assert len(run["cache"]) == 4  # attention blocks 1 to 4
