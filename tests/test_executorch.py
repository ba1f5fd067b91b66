"""The executorch export in ExecuTorch (scripts/install_executorch.sh: executorch with its own torch, in a venv of its
own, run through tests/helpers/runtime_testing.py and executorch_worker.py).

``export_model(format="executorch", executorch_python=...)`` writes ExecuTorch's Llama checkpoint and params
(``layer_types``: ``skip_attention``) and runs ExecuTorch's own Llama export (KV cache, XNNPACK, float32) there;
ExecuTorch's runtime runs the .pte. ExecuTorch's export takes minutes on SmolLM2 (4.4 CPU-minutes measured): the
.pte files of the exports below are kept in a cache keyed by everything they are made from
(runtime_testing.lower_cached; HOPSCOTCH_PTE_CACHE=0 lowers anew), and one export always goes through
export_model's own call of ExecuTorch (the tiny model with block 0 skipped).

- SmolLM2 with the README's 4-block plan: greedy 32 tokens equal the patched model's on 4 prompts, log-probabilities
  within LOGPROB_TOL;
- the .pte holds nothing for a skipped block: a tiny model exported in full and thin (one attention block skipped)
  differs in the .pte's weights by exactly that block's q/k/v/o bytes, and in the tensors of the KV-cache shape by
  exactly one layer's share; SmolLM2's thin .pte has that share for its 26 kept attention blocks only;
- what the format accepts runs: the tiny model with attention block 0 skipped gives the patched model's tokens.

They skip when ExecuTorch's venv is absent, unless HOPSCOTCH_REQUIRE_EXECUTORCH=1 (CI), where they fail.

LOGPROB_TOL: as tests/test_mlx.py (float32 on both sides, only the summation order differs; a scalar left out of the
fold moves these log-probabilities by 1.7e-3 and more). The largest difference measured is in docs/ENGINES.md.
"""

from __future__ import annotations

import pytest
import torch

from hopscotch import SkipPlan, export_model
from hopscotch.export.executorch_export import CHECKPOINT, PTE
from hopscotch.testing import tiny_model
from tests.helpers import DATA
from tests.helpers.runtime_testing import (compare_greedy, lower_cached, need_runtime, patched_greedy, run_worker,
                                           smollm2_with_prompts)

pytestmark = [pytest.mark.slow, pytest.mark.engine]

LOGPROB_TOL = 1e-3
NEW_TOKENS = 32
CONTEXT = 128  # the .pte's KV-cache capacity: the prompts (<= 40 tokens) and 32 new tokens fit
PROMPTS = ["What is the largest planet in the solar system?", "Write a haiku about autumn leaves.",
           "Explain in two sentences why the sky is blue.", "List three uses of copper."]
README_PLAN = DATA / "smollm2_learned_plan"  # attention blocks 6 7 25 29


def _kv_shape(model) -> list[int]:
    cfg = model.config
    return [1, cfg.num_key_value_heads, CONTEXT, cfg.hidden_size // cfg.num_attention_heads]


@pytest.fixture(scope="module")
def et(module_tmp):
    """ExecuTorch's runs of: SmolLM2 with the README plan; a tiny Llama in full, thin (attention block 2 skipped),
    and with attention block 0 skipped. The first three are lowered in one ExecuTorch process (through the test
    cache of .pte files, runtime_testing.lower_cached); the last by export_model(executorch_python=...) itself, as
    a user's export runs. All four run in one ExecuTorch runtime process."""
    python = need_runtime("executorch")  # before loading anything: skip (or fail when required) at once
    model, tok, prompts = smollm2_with_prompts(PROMPTS)
    d = module_tmp("executorch")
    plan = SkipPlan.load(README_PLAN)
    tiny = tiny_model("llama", num_layers=4)
    g = torch.Generator().manual_seed(0)
    scalars = 0.9 + 0.2 * torch.rand(4, 4, generator=g)
    tiny_plans = {"full": SkipPlan.for_model(tiny, [], [], scalars, method="test"),
                  "thin": SkipPlan.for_model(tiny, [2], [], scalars, method="test"),
                  "block0": SkipPlan.for_model(tiny, [0, 3], [], scalars, method="test")}
    dirs = {"smollm2": export_model(model, plan, d / "smollm2", format="executorch", tokenizer=tok),
            **{k: export_model(tiny, tiny_plans[k], d / k, format="executorch") for k in ("full", "thin")}}
    cached = lower_cached(python, list(dirs.values()), CONTEXT)
    dirs["block0"] = export_model(tiny, tiny_plans["block0"], d / "block0", format="executorch",
                                  executorch_python=python, executorch_context=CONTEXT)
    tiny_prompts = [torch.randint(3, 97, (n,), generator=g).tolist() for n in (3, 17, 30)]
    job = {"runs": [{"pte": str(dirs[k] / PTE), "prompts": prompts if k == "smollm2" else tiny_prompts,
                     "max_tokens": NEW_TOKENS if k == "smollm2" else 16,
                     "kv_shape": _kv_shape(model if k == "smollm2" else tiny)} for k in dirs]}
    out = run_worker("executorch", job, work_dir=d)
    print(f"ExecuTorch {out['versions']}; .pte from the test cache: {dict(zip(list(dirs)[:3], cached))}")
    return {"model": model, "plan": plan, "dirs": dirs, "runs": dict(zip(dirs, out["runs"])), "tiny": tiny,
            "tiny_plans": tiny_plans, "tiny_prompts": tiny_prompts,
            "refs": patched_greedy(model, plan, prompts, NEW_TOKENS)}


def test_executorch_generates_what_the_patched_model_does(et):
    run = et["runs"]["smollm2"]
    assert run["pte"]["delegates"] == ["XnnpackBackend"]
    diffs = compare_greedy(run["results"], et["refs"], LOGPROB_TOL, PROMPTS)
    print(f"ExecuTorch: max |logprob diff| per prompt {[f'{d:.1e}' for d in diffs]}")
    assert len(diffs) == len(PROMPTS) >= 4


def test_pte_holds_no_weights_or_cache_for_a_skipped_block(et):
    full, thin = et["runs"]["full"]["pte"], et["runs"]["thin"]["pte"]
    cfg = et["tiny"].config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    qkvo = 4 * cfg.hidden_size * (2 * cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * head_dim
    norm = 4 * cfg.hidden_size  # the skipped block's input norm (ExecuTorch puts an identity there)
    assert full["weight_bytes"] - thin["weight_bytes"] == qkvo + norm
    assert full["named_data_bytes"] - thin["named_data_bytes"] == qkvo  # XNNPACK's weights: the projections
    per_layer = full["kv_tensors"] // cfg.num_hidden_layers
    assert per_layer >= 2 and full["kv_tensors"] == per_layer * 4 and thin["kv_tensors"] == per_layer * 3
    assert thin["planned_bytes"] < full["planned_bytes"] and thin["file_bytes"] < full["file_bytes"]


def test_smollm2_pte_caches_only_kept_blocks(et):
    """The same accounting on SmolLM2: KV-cache tensors for 26 attention blocks, and the .pte's constants are the
    checkpoint's (which has no tensor of a skipped block) plus ExecuTorch's own rotary tables (cos and sin,
    [context, head_dim] float32) and causal mask ([context, context] bool): 81,920 bytes at context 128, where one
    skipped block's q/k/v/o would be 3.5 MB."""
    pte, plan, cfg = et["runs"]["smollm2"]["pte"], et["plan"], et["model"].config
    per_layer = et["runs"]["full"]["pte"]["kv_tensors"] // 4
    assert pte["kv_tensors"] == per_layer * (30 - len(plan.skipped_attention)) == per_layer * 26
    state = torch.load(et["dirs"]["smollm2"] / CHECKPOINT, weights_only=True, mmap=True)
    assert not [n for n in state if any(n.startswith(f"layers.{i}.attention") for i in plan.skipped_attention)]
    extra = pte["weight_bytes"] - sum(t.numel() * t.element_size() for t in state.values())
    rotary_and_mask = 2 * CONTEXT * (cfg.hidden_size // cfg.num_attention_heads) * 4 + CONTEXT * CONTEXT
    print(f"ExecuTorch SmolLM2 .pte: {pte['file_bytes']:,} bytes, weights {pte['weight_bytes']:,} = the checkpoint's "
          f"+ {extra:,}; planned memory {pte['planned_bytes']:,} bytes; {pte['kv_tensors']} KV-shaped tensors")
    assert rotary_and_mask <= extra <= rotary_and_mask + 1024


@pytest.mark.parametrize("case", ["thin", "block0"])
def test_what_executorch_accepts_runs(et, case):
    """Greedy tokens equal the patched model's, a skipped attention block 0 included."""
    refs = patched_greedy(et["tiny"], et["tiny_plans"][case], et["tiny_prompts"], 16)
    compare_greedy(et["runs"][case]["results"], refs, LOGPROB_TOL)
