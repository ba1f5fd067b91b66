"""Runs in ExecuTorch's venv (scripts/install_executorch.sh), started by tests/helpers/runtime_testing.py: imports
torch, ExecuTorch and the standard library only.

    python executorch_worker.py JOB.json OUT.json

JOB: {"runs": [{"pte": FILE, "prompts": [[ids...], ...], "max_tokens": N, "kv_shape": [1, kv heads, context,
head_dim]}, ...]}, several programs in one process (ExecuTorch's imports paid once). Each program is loaded by
ExecuTorch's runtime (``executorch.runtime``: the prebuilt portable kernels and the XNNPACK delegate) and its
``forward(tokens, input_pos)`` method run as ExecuTorch's Llama runner does: the whole prompt at position 0, then
one token per step at the next position; greedy by argmax of the last position's logits. OUT["runs"]: per program,
per prompt the tokens and each chosen token's log-softmax; the method's input shapes (the longest prompt step the
program takes); and the program's own accounting (``hopscotch/export/executorch_pte.py: pte_summary``, from the
deserialized .pte): its bytes, weight bytes, planned memory, and the tensors of the KV-cache shape ``kv_shape``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _pte_module():
    """hopscotch/export/executorch_pte.py, imported by path (it needs nothing from hopscotch)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "python" / "hopscotch" / "export" / "executorch_pte.py"
    spec = importlib.util.spec_from_file_location("executorch_pte", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def greedy(method, prompts: list[list[int]], max_tokens: int) -> list[dict]:
    import torch

    results = []
    for ids in prompts:
        tokens, logprobs, pos = [], [], 0
        x = torch.tensor([ids], dtype=torch.long)
        for _ in range(max_tokens):
            logits = method.execute([x, torch.tensor([pos], dtype=torch.long)])[0].reshape(-1).double()
            token = int(logits.argmax())
            logprobs.append(float(torch.log_softmax(logits, -1)[token]))
            tokens.append(token)
            pos += x.shape[1]
            x = torch.tensor([[token]], dtype=torch.long)
        results.append({"tokens": tokens, "logprobs": logprobs})
    return results


def main(job_path: str, out_path: str) -> int:
    import importlib.metadata as metadata

    from executorch.runtime import Runtime

    job = json.loads(Path(job_path).read_text())
    pte = _pte_module()
    runs = []
    for run in job["runs"]:
        method = Runtime.get().load_program(run["pte"]).load_method("forward")
        meta = method.metadata
        runs.append({"results": greedy(method, run["prompts"], run["max_tokens"]),
                     "inputs": [str(meta.input_tensor_meta(i)) for i in range(meta.num_inputs())],
                     "pte": pte.pte_summary(run["pte"], run.get("kv_shape"))})
    out = {"runs": runs, "versions": {p: metadata.version(p) for p in ("executorch", "torch")}}
    Path(out_path).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
