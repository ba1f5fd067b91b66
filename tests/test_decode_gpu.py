"""Decode correctness on the device (issue 45): the patched model's own-cache generate() against HF's greedy
decoding, every decode step's logits compared, in bfloat16, float16 and float32, batch 1 and a left-padded batch of
16, no skipped block and two; and one compiled decode step against the eager one. gpu_suite.sh runs these (-m gpu);
on a machine without a GPU they skip, except the float32 CPU cases, which check the comparisons themselves.

Tolerances: logits within the patch tests' per-dtype tolerance (tests/helpers/model_testing.py LOGIT_TOL); tokens
equal in float32; in bfloat16 / float16 a row may take another token only where HF's two best logits are closer than
that tolerance (a near tie the rounding may flip), and the row is compared no further (its inputs differ from then).
"""

from __future__ import annotations

import pytest
import torch

from hopscotch.hf_compat import cache_kwargs, output_cache
from hopscotch.patch import HopscotchCache, patch_model, set_skips
from tests.helpers.model_testing import LOGIT_TOL, left_padded_batch, tiny_model, zeroed_attention
from tests.helpers.op_testing import needs_cuda_kernels

_NO_GPU = "no CUDA GPU on this machine (decode correctness on the device runs in benchmarks/gpu_suite.sh)"
_gpu = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=_NO_GPU)]
CASES = [pytest.param("cpu", torch.float32, id="cpu-float32")] + [
    pytest.param("cuda", dt, marks=_gpu, id=f"cuda-{str(dt).split('.')[-1]}")
    for dt in (torch.bfloat16, torch.float16, torch.float32)]
BATCHES = {1: [9], 16: [3 + (5 * i) % 14 for i in range(16)]}  # 16: left-padded, 3 to 16 tokens
SKIPS = {0: [], 2: [1, 3]}
NEW = 12


def _greedy(model, ids, mask, **kw):
    """(new tokens [B, NEW], raw logits of every step [B, NEW, vocab] in float32) of HF's greedy generate()."""
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                             pad_token_id=0, output_logits=True, return_dict_in_generate=True, **kw)
    return out.sequences[:, ids.shape[1]:], torch.stack(out.logits, 1).float(), out


def _compare(dtype, got_tokens, got_logits, ref_tokens, ref_logits) -> int:
    """Per row, step by step until the row's first other token: logits within tolerance; another token only at a
    near tie outside float32. Returns the number of (row, step) logits compared."""
    tol = LOGIT_TOL[dtype]
    compared = 0
    for r in range(ref_tokens.shape[0]):
        for s in range(NEW):
            torch.testing.assert_close(got_logits[r, s], ref_logits[r, s], **tol,
                                       msg=lambda m: f"row {r}, decode step {s}: {m}")
            compared += 1
            if got_tokens[r, s] != ref_tokens[r, s]:
                top2 = ref_logits[r, s].topk(2).values
                margin = (top2[0] - top2[1]).item()
                bound = 2 * (tol["atol"] + tol["rtol"] * top2[0].abs().item())
                assert dtype != torch.float32 and margin <= bound, (
                    f"row {r}, step {s}: token {got_tokens[r, s].item()} where HF takes {ref_tokens[r, s].item()}, "
                    f"HF's margin {margin:.3g} > {bound:.3g} ({dtype})")
                break
    return compared


@pytest.mark.parametrize("k", sorted(SKIPS))
@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("device, dtype", CASES)
def test_own_cache_generate_equals_hf_greedy_at_every_decode_step(device, dtype, batch, k):
    needs_cuda_kernels(device)
    model = tiny_model("llama", dtype=dtype).to(device)
    ids, mask = (t.to(device) for t in left_padded_batch(97, BATCHES[batch], seed=batch + k))
    with zeroed_attention(model, SKIPS[k]):  # HF's model with the skipped blocks' attention an identity
        ref_tokens, ref_logits, _ = _greedy(model, ids, mask)
    patch_model(model)
    set_skips(model, attention=SKIPS[k])
    got_tokens, got_logits, out = _greedy(model, ids, mask)
    assert isinstance(output_cache(out), HopscotchCache)
    assert output_cache(out).layers[0].key_buffer.device.type == device
    compared = _compare(dtype, got_tokens, got_logits, ref_tokens, ref_logits)
    if dtype == torch.float32:
        assert torch.equal(got_tokens, ref_tokens)
        assert compared == batch * NEW  # every decode step of every row


@pytest.mark.parametrize("device, dtype", CASES)
def test_compiled_decode_step_equals_the_eager_step(device, dtype):
    """A left-padded batch of 16 with two blocks skipped: one decode step compiled (fullgraph, no recompilation)
    against the eager step, 12 steps, each step's logits compared. On the device with Inductor; on the CPU the
    captured graph runs as it is (the graph, its guards and the cache's buffers are what is checked there)."""
    needs_cuda_kernels(device)
    assert_compiled_step_matches_eager(device, dtype, inner=None if device == "cuda" else lambda gm, ex: gm.forward)


def assert_compiled_step_matches_eager(device: str, dtype: torch.dtype, steps: int = NEW, inner=None) -> None:
    """``inner``: the backend each graph compiles with (default Inductor, what a user gets)."""
    model = tiny_model("llama", dtype=dtype).to(device)
    patch_model(model)
    set_skips(model, attention=SKIPS[2])
    ids, mask = (t.to(device) for t in left_padded_batch(97, BATCHES[16], seed=7))
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        if inner is not None:
            return inner(gm, example_inputs)
        from torch._inductor.compile_fx import compile_fx
        return compile_fx(gm, example_inputs)

    def step(nxt, mask, pos, cache):
        return model(input_ids=nxt, attention_mask=mask, position_ids=pos, **cache_kwargs(cache),
                     use_cache=True).logits

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    caches = [HopscotchCache(capacity=ids.shape[1] + steps) for _ in range(2)]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        for cache in caches:  # the prefill runs eagerly and allocates the capacity
            last = step(ids, mask, pos, cache)[:, -1:]
        nxt = last.argmax(-1)
        for s in range(steps):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            pos = pos[:, -1:] + 1
            # The compiled step reads only the new token's mask (a shape that does not grow: no recompilation);
            # the cache holds the padding of the prefill.
            got, want = compiled(nxt, mask[:, -1:].contiguous(), pos, caches[0]), step(nxt, mask, pos, caches[1])
            torch.testing.assert_close(got.float(), want.float(), **LOGIT_TOL[dtype],
                                       msg=lambda m: f"decode step {s}: {m}")
            nxt = want[:, -1:].argmax(-1)
    assert len(graphs) == 1, f"{len(graphs)} compilations over {steps} steps"
