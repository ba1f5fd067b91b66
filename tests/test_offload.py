"""A model larger than its device: loaded with a ``device_map`` whose ``max_memory`` sends most of it to disk
(accelerate's hooks load each module's weights for its forward). Patched with nothing skipped it computes what the
unpatched offloaded model computes; skips, generate() and a short search work on it, no offloaded weight is copied
into a fused projection, and the weights are back on disk (meta) after each forward."""

from __future__ import annotations

import pytest
import torch

from hopscotch import patch_model, unpatch_model
from hopscotch.patch import patched_layers, set_skips
from hopscotch.search import search
from tests.helpers.model_testing import LOGIT_TOL, calibration_batches, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

PAPER = dict(generic_weight=0, final_epochs=1, progress=False)


@pytest.fixture(scope="module", params=["llama", "qwen3"])  # qwen3: per-head q/k norms read directly
def saved(request, module_tmp):
    path = module_tmp(request.param)
    tiny_model(request.param, num_layers=5).save_pretrained(path / "model")
    return request.param, path


def _offloaded(saved):
    from transformers import AutoModelForCausalLM

    arch, path = saved
    model = AutoModelForCausalLM.from_pretrained(path / "model", device_map="auto", max_memory={"cpu": "150KB"},
                                                 offload_folder=str(path / "offload"), dtype=torch.float32)
    assert "disk" in model.hf_device_map.values(), model.hf_device_map  # the test's premise: weights on disk
    return model.eval()


def _weights_on_disk(model) -> bool:
    return all(p.device.type == "meta" for layer in model.model.layers for p in layer.parameters()
               if p.dim() == 2)


def test_patched_offloaded_model_computes_the_unpatched_one(saved):
    model = _offloaded(saved)
    ids = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
    ref_gen = model.generate(ids, max_new_tokens=6, do_sample=False)
    patch_model(model)
    assert all(lay._qkv is None and lay._gate_up is None for lay in patched_layers(model))  # nothing fused
    with torch.no_grad():
        out = model(ids).logits
    torch.testing.assert_close(out, ref, **LOGIT_TOL[torch.float32])
    assert torch.equal(model.generate(ids, max_new_tokens=6, do_sample=False), ref_gen)
    assert _weights_on_disk(model)  # loaded for each forward, dropped after: nothing kept in memory
    # skips: what the same skips give on the model held in memory
    memory = patch_model(tiny_model(saved[0], num_layers=5))
    for m in (model, memory):
        set_skips(m, attention=[1, 3])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, memory(ids).logits, **LOGIT_TOL[torch.float32])
    assert torch.equal(model.generate(ids, max_new_tokens=6, do_sample=False),
                       memory.generate(ids, max_new_tokens=6, do_sample=False))
    unpatch_model(model)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref, rtol=0, atol=0)


def test_search_on_offloaded_model(saved, monkeypatch):
    """The faithful search picks what it picks on the model in memory, with scalars equal up to rounding (the
    offloaded projections run one by one, the in-memory ones fused); the backward read the offloaded weights again
    instead of holding them (patch/offload.py); the fast search runs."""
    from hopscotch.patch import offload

    reread = []
    unpack = offload._unpack
    monkeypatch.setattr(offload, "_unpack", lambda x: (reread.append(isinstance(x, offload._Note)), unpack(x))[1])
    batches = calibration_batches(n=3)
    model = _offloaded(saved)
    plan = search(model, batches, method="hopscotch", num_skip=2, **PAPER)
    assert sum(reread) >= 7 * 5 * 3  # every offloaded weight of every layer, at every training step
    assert not offload._LOADED  # every load was dropped again
    ref = search(tiny_model(saved[0], num_layers=5), batches, method="hopscotch", num_skip=2, **PAPER)
    assert plan.skipped_attention == ref.skipped_attention
    torch.testing.assert_close(plan.scalar_tensor(), ref.scalar_tensor(), rtol=0, atol=1e-5)
    assert plan.provenance["steps"][0]["scores"].keys() == ref.provenance["steps"][0]["scores"].keys()
    fast = search(model, batches, method="hopscotch-fast", num_skip=1, budget_ratio=0, **PAPER)
    assert len(fast.skipped_attention) == 1
    assert _weights_on_disk(model)
