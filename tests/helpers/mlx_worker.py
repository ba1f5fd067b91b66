"""Runs in MLX's venv (scripts/install_mlx.sh), started by tests/helpers/runtime_testing.py: imports MLX, mlx-lm
and the standard library only.

    python mlx_worker.py JOB.json OUT.json

JOB: {"model": DIR, "prompts": [[ids...], ...], "max_tokens": N, "convert_4bit": DIR or null, "tokenizer": true}.
The export directory is loaded with ``mlx_lm.load`` as written (``mlx_lm.utils.load_model`` with "tokenizer":
false, for an export without one). Each prompt is decoded greedily by argmax over MLX's own
logits (float32 on the CPU), one ``model(ids, cache=cache)`` call per step over mlx-lm's own prompt cache
(``make_prompt_cache``). OUT: per prompt the tokens and each chosen token's log-softmax; the model type; and the
cache as MLX holds it after the last prompt: one entry per attention layer that has one, with its class, its
offset (tokens cached), the shape and bytes of its keys and values. With ``convert_4bit``, ``mlx_lm.convert``
writes a 4-bit (group 64) copy there, which is loaded and decoded the same way ("quantized" in OUT).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def greedy(model, prompts: list[list[int]], max_tokens: int) -> tuple[list[dict], list]:
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    results, cache = [], None
    for ids in prompts:
        cache = make_prompt_cache(model)
        x = mx.array([ids])
        tokens, logprobs = [], []
        for _ in range(max_tokens):
            logits = model(x, cache=cache)[0, -1].astype(mx.float32)
            token = int(mx.argmax(logits).item())
            logprobs.append(float((logits - mx.logsumexp(logits))[token].item()))
            tokens.append(token)
            x = mx.array([[token]])
        results.append({"tokens": tokens, "logprobs": logprobs})
    return results, cache


def describe_cache(cache) -> list[dict]:
    """Each cache entry as MLX holds it: its key and value buffers (allocated in steps of 256 tokens), the tokens
    in them (offset), their bytes."""
    out = []
    for entry in cache:
        keys, values = entry.keys, entry.values
        out.append({"class": type(entry).__name__, "offset": int(entry.offset), "keys_shape": list(keys.shape),
                    "values_shape": list(values.shape), "nbytes": int(entry.nbytes), "dtype": str(keys.dtype)})
    return out


def main(job_path: str, out_path: str) -> int:
    import importlib.metadata as metadata

    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.utils import load_model

    job = json.loads(Path(job_path).read_text())
    mx.set_default_device(mx.cpu)
    # load: the model and its tokenizer, as a user does; load_model: the model alone (an export with no tokenizer)
    model = load(job["model"])[0] if job.get("tokenizer", True) else load_model(Path(job["model"]))[0]
    results, cache = greedy(model, job["prompts"], job["max_tokens"])
    out = {"results": results, "model_type": model.model_type, "layers": len(model.layers),
           "cache": describe_cache(cache), "weight_dtype": str(model.model.embed_tokens.weight.dtype),
           "versions": {p: metadata.version(p) for p in ("mlx", "mlx-lm")}}
    if job.get("convert_4bit"):
        from mlx_lm import convert

        convert(job["model"], mlx_path=job["convert_4bit"], quantize=True, q_bits=4, q_group_size=64)
        qmodel, _ = load(job["convert_4bit"])
        qresults, qcache = greedy(qmodel, job["prompts"], job["max_tokens"])
        config = json.loads((Path(job["convert_4bit"]) / "config.json").read_text())
        out["quantized"] = {"results": qresults, "cache": describe_cache(qcache),
                            "quantization": config.get("quantization"),
                            "bytes": sum(p.stat().st_size for p in Path(job["convert_4bit"]).glob("*.safetensors"))}
    Path(out_path).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
