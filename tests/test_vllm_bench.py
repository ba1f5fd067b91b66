"""benchmarks/bench_vllm.py's cost model (the ideal speed-ups it compares vLLM's against); no vLLM needed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from hopscotch import SkipPlan
from tests.helpers.model_testing import tiny_model


@pytest.fixture(scope="module")
def bench():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_vllm.py"
    spec = importlib.util.spec_from_file_location("bench_vllm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("tied", [False, True])
def test_costs_count_the_kept_matmuls_the_head_and_the_kept_attention(bench, tied):
    model = tiny_model("llama", tie_word_embeddings=tied)  # hidden 64, 4 heads of 16, 2 KV heads, MLP 88, vocab 97
    attention = 64 * 64 + 2 * 64 * 32 + 64 * 64  # q, k, v, o
    mlp = 3 * 64 * 88
    full, thin = (bench.plan_costs(model, SkipPlan.for_model(model, skips)) for skips in ([], [1, 3]))
    assert full == {"weight_flops": 2 * (5 * (attention + mlp) + 97 * 64), "q_width": 5 * 64, "kv_layers": 5}
    assert thin == {"weight_flops": full["weight_flops"] - 2 * 2 * attention, "q_width": 3 * 64, "kv_layers": 3}


def test_prefill_and_generation_flops(bench):
    c = {"weight_flops": 1000, "q_width": 10}
    # 3 prompt tokens: weights 3 x 1000, attention over spans 1 + 2 + 3 at 4 FLOPs per query element and key
    assert bench.prefill_flops(c, 3) == 3000 + 4 * 10 * 6
    # then 2 decode steps (the first new token comes out of the prompt's pass) at contexts 4 and 5
    assert bench.generation_flops(c, 3, 3) == bench.prefill_flops(c, 3) + 2 * 1000 + 4 * 10 * (4 + 5)
