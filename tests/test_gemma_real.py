"""The real Gemma 3 270M (``hopscotch --model gemma3``): the patch's guarantees on it, and a k = 1 search.

Slow. The model ships as packages (``HOPSCOTCH_GEMMA=1 bash scripts/setup.sh``); the tests skip, saying so, when
they are not installed, unless HOPSCOTCH_REQUIRE_GEMMA=1 (CI), where they fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from hopscotch import patch_model, set_skips, unpatch_model
from tests.helpers.model_testing import greedy_without_cache

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma3():
    from hopscotch.models import ModelNotFoundError, load_model

    try:
        return load_model("gemma3")
    except ModelNotFoundError as exc:
        if os.environ.get("HOPSCOTCH_REQUIRE_GEMMA") == "1":
            pytest.fail(f"HOPSCOTCH_REQUIRE_GEMMA=1 but {exc}")
        pytest.skip(str(exc))


def _prompt(tok, repeat: int = 1):
    text = "The capital of France is Paris. The largest planet in the solar system is"
    ids = tok(" ".join([text] * repeat), return_tensors="pt").input_ids
    return ids, torch.ones_like(ids)


def test_patched_equals_the_original(gemma3):
    model, tok = gemma3
    assert model.config.model_type == "gemma3_text"
    ids, mask = _prompt(tok)
    try:
        with torch.no_grad():
            ref = model(ids).logits
            ref_gen = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
            patch_model(model)
            out = model(ids).logits
            gen = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    finally:
        unpatch_model(model)
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=2e-3)
    assert torch.equal(gen, ref_gen)


def test_cached_equals_uncached_past_the_sliding_window_with_blocks_skipped(gemma3):
    model, tok = gemma3
    window = model.config.sliding_window
    ids, mask = _prompt(tok, repeat=window // 14 + 2)  # the prompt alone outgrows the window
    assert ids.shape[1] > window
    patch_model(model)
    try:
        set_skips(model, attention=[3, 8, 11])  # sliding-window blocks 3 and 8, global block 11
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
            ref = greedy_without_cache(model, ids, mask, 6, eos_id=None)
    finally:
        unpatch_model(model)
    assert torch.equal(gen, ref)


def test_a_k1_search_runs(gemma3, tmp_path):
    """The CLI end to end on the packaged name (LLM-Drop scoring the task's own batches, no evaluation: no training
    and no Wikipedia pass, so it stays short on CPU; the study runs the full evaluation)."""
    cmd = [sys.executable, "-m", "hopscotch", "search", "--model", "gemma3", "--method", "llm-drop", "--num-skip",
           "1", "--similarity-data", "task", "--calibration", "4", "--evaluation", "8", "--no-eval", "--no-speed",
           "--quiet", "--json", "--out",
           str(tmp_path / "plan.json")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-2000:]
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert len(plan["skipped_attention"]) == 1
    assert plan["fingerprint"]["model_type"] == "gemma3_text"
