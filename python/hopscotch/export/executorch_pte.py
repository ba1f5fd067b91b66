"""Runs in ExecuTorch's venv, never imported by hopscotch: torch, ExecuTorch and the standard library only.

    python executorch_pte.py [--context N] [--dtype fp32|bf16|fp16] DIR [DIR ...]

Writes ``DIR/model.pte`` for each ``hopscotch export --format executorch`` directory (``model.pth`` + ``params.json``)
by ExecuTorch's own Llama export, ``export_llama`` with the arguments of its command line

    python -m executorch.examples.models.llama.export_llama --model llama3 -c DIR/model.pth -p DIR/params.json \
        -kv -X -d fp32 --max_seq_length N --max_context_length N -n DIR/model.pte

(KV cache, XNNPACK delegate; a prompt of up to N - 1 tokens in one call, N tokens of context). Several directories
are lowered in one process to pay for ExecuTorch's imports once. ``params.json``'s ``layer_types`` marks each
skipped attention block ``skip_attention``: ExecuTorch's ``construct_transformer`` gives that layer an
``AttentionSkip`` (no projections, no KV cache) and an identity in place of its norm.

``pte_summary(path)`` reads back what a .pte holds (the tests and the benchmark report it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

DTYPES = ("fp32", "bf16", "fp16")


def export_llama_args(export_dir: str | Path, context: int, dtype: str) -> list[str]:
    """ExecuTorch's export_llama command-line arguments for one export directory."""
    d = Path(export_dir)
    return ["--model", "llama3", "--checkpoint", str(d / "model.pth"), "--params", str(d / "params.json"),
            "--use_kv_cache", "--xnnpack", "--dtype-override", dtype, "--max_seq_length", str(context),
            "--max_context_length", str(context), "--output_name", str(d / "model.pte")]


def lower(export_dir: str | Path, context: int, dtype: str) -> Path:
    from executorch.examples.models.llama.export_llama_lib import build_args_parser, export_llama

    export_llama(build_args_parser().parse_args(export_llama_args(export_dir, context, dtype)))
    out = Path(export_dir) / "model.pte"
    if not out.is_file():
        raise RuntimeError(f"ExecuTorch's export_llama wrote no {out}")
    return out


def pte_summary(path: str | Path, kv_shape: list[int] | None = None) -> dict:
    """What a .pte file holds, read from the program itself (``deserialize_pte_binary``):

    - ``file_bytes``; ``weight_bytes``: the named data (the weights the XNNPACK delegates load) plus the program's
      constant buffer (the weights left to portable kernels: the embedding table, norms);
    - ``planned_bytes``: the memory the runtime allocates for the program's mutable state and activations
      (``non_const_buffer_sizes``; the KV cache lives there);
    - ``kv_tensors``: how many of the program's tensors have the KV-cache shape ``kv_shape`` (the caches and their
      updated copies: a fixed number per attention layer that has a cache).
    """
    from executorch.exir._serialize._program import deserialize_pte_binary

    data = Path(path).read_bytes()
    pte = deserialize_pte_binary(data)
    program = pte.program
    plan = program.execution_plan[0]
    named = pte.named_data
    named_bytes = sum(len(named.buffers[e.buffer_index]) for e in named.pte_data.values()) if named else 0
    constant_bytes = sum(len(b.storage) for b in program.constant_buffer)
    constant_bytes += sum(s.size for s in program.segments) if program.constant_segment.offsets else 0
    tensors = [v.val for v in plan.values if type(v.val).__name__ == "Tensor"]
    return {"file_bytes": len(data), "weight_bytes": named_bytes + constant_bytes, "named_data_bytes": named_bytes,
            "constant_bytes": constant_bytes, "planned_bytes": int(sum(plan.non_const_buffer_sizes)),
            "delegates": sorted({d.id for d in plan.delegates}),
            "kv_tensors": None if kv_shape is None else sum(list(t.sizes) == list(kv_shape) for t in tensors)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", metavar="DIR", help="hopscotch export --format executorch directories")
    p.add_argument("--context", type=int, default=2048, help="KV-cache capacity in tokens (default 2048)")
    p.add_argument("--dtype", default="fp32", choices=DTYPES, help="ExecuTorch's --dtype-override (default fp32)")
    p.add_argument("--summary", action="store_true", help="print each .pte's pte_summary as a JSON line")
    args = p.parse_args(argv)
    # ExecuTorch's export logs its phases (as its export_llama command does); on stderr, the summaries on stdout
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s %(filename)s:%(lineno)s] %(message)s",
                        stream=sys.stderr, force=True)
    for d in args.dirs:
        out = lower(d, args.context, args.dtype)
        if args.summary:
            params = json.loads((Path(d) / "params.json").read_text())
            head_dim = params.get("head_dim") or params["dim"] // params["n_heads"]
            kv_shape = [1, params["n_kv_heads"], args.context, head_dim]
            print(json.dumps({"pte": str(out), **pte_summary(out, kv_shape)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
