"""That the patch took: which implementation of the ops a patched model actually runs.

Counted, not assumed: an OpCounter (a TorchDispatchMode) sees every torch.ops.hopscotch_ext op a forward or a
training step dispatches, and hopscotch_ext.reference_calls() counts the calls served by the pure-torch
references. With the compiled extension loaded the ops dispatch and no reference runs; with it disabled
(HOPSCOTCH_DISABLE_EXTENSION=1, in a subprocess) the same ops dispatch and the references serve every one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import hopscotch_ext
from tests.helpers import ROOT
from tests.helpers.dispatch_counts import inference_counts, training_counts

needs_ext = pytest.mark.skipif(not hopscotch_ext.info()["loaded"],
                               reason=f"compiled extension not loaded: {hopscotch_ext.info()['load_error']}")

# Inference with the model's own KV cache (use_cache, the default) and without a cache.
INFERENCE_OPS = {"hopscotch_ext::scaled_add_rms_norm_", "hopscotch_ext::rms_norm",
                 "hopscotch_ext::rotary_embedding_kv_cache", "hopscotch_ext::rotary_embedding",
                 "hopscotch_ext::silu_gate_up"}
TRAINING_OPS = {"hopscotch_ext::scaled_add_rms_norm", "hopscotch_ext::rms_norm",
                "hopscotch_ext::rotary_embedding_out", "hopscotch_ext::silu_gate_up"}


@needs_ext
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_patched_inference_dispatches_the_compiled_ops(arch):
    counts = inference_counts(arch)
    assert INFERENCE_OPS <= set(counts["ops"]), counts
    assert counts["reference"] == {}, f"pure-torch references ran with the extension loaded: {counts}"


@needs_ext
def test_search_training_dispatches_the_compiled_rotary_and_norm_ops():
    counts = training_counts()
    assert TRAINING_OPS <= set(counts["ops"]), counts
    assert counts["reference"] == {}, f"pure-torch references ran during training: {counts}"
    assert counts["scalars_moved"], "train_scalars did not change any scalar"


_CHILD = """
import json, sys
sys.path.insert(0, {root!r})
from tests.helpers.dispatch_counts import inference_counts, training_counts
print(json.dumps({{"inference": inference_counts(), "training": training_counts()}}))
"""


def test_with_the_extension_disabled_the_references_serve_every_op():
    env = {**os.environ, "HOPSCOTCH_DISABLE_EXTENSION": "1"}
    code = _CHILD.format(root=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    for phase, expected in (("inference", INFERENCE_OPS), ("training", TRAINING_OPS)):
        ops, ref = res[phase]["ops"], res[phase]["reference"]
        assert expected <= set(ops), (phase, res)
        # Every dispatched op was served by its reference (same op names, same counts).
        assert {k.split("::")[1]: v for k, v in ops.items()} == ref, (phase, res)
    assert res["training"]["scalars_moved"]
