"""Running the on-device runtimes from the tests: MLX (scripts/install_mlx.sh) and ExecuTorch
(scripts/install_executorch.sh) live in venvs of their own, so the tests run a worker there as a subprocess
(tests/helpers/mlx_worker.py, executorch_worker.py) and exchange token ids and results through files.

- ``need_runtime(name)``: the runtime venv's python, or a skip saying why there is none (a failure under
  HOPSCOTCH_REQUIRE_MLX=1 / HOPSCOTCH_REQUIRE_EXECUTORCH=1, as CI sets them);
- ``run_worker(name, job, work_dir)``: the worker's JSON answer to ``job``;
- ``lower_cached(python, dirs, context)``: ExecuTorch's .pte for executorch export directories, cached by content;
- ``smollm2_with_prompts(texts)``: the packaged SmolLM2, its tokenizer and the texts as chat prompts (token ids);
- ``patched_greedy(model, plan, prompts, n)``: the reference, the patched model's greedy tokens and their
  log-softmax; ``compare_greedy``: equal tokens, log-probabilities within a tolerance.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT
from tests.helpers.vllm_testing import _kill_group, _tail

WORKER_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Runtime:
    label: str
    venv_env: str  # the variable naming its venv
    default_venv: str
    require_env: str  # the variable that forbids the skip
    check: str  # python that imports it and prints its version
    install: str
    worker: str

    def venv(self) -> Path:
        return Path(os.environ.get(self.venv_env, ROOT / self.default_venv))


RUNTIMES = {
    "mlx": Runtime("MLX", "HOPSCOTCH_MLX_VENV", ".venv-mlx", "HOPSCOTCH_REQUIRE_MLX",
                   "import importlib.metadata as m, mlx.core, mlx_lm; print(m.version('mlx'))",
                   "bash scripts/install_mlx.sh", "mlx_worker.py"),
    "executorch": Runtime("ExecuTorch", "HOPSCOTCH_EXECUTORCH_VENV", ".venv-executorch",
                          "HOPSCOTCH_REQUIRE_EXECUTORCH",
                          "import importlib.metadata as m; from executorch.runtime import Runtime; "
                          "print(m.version('executorch'))",
                          "bash scripts/install_executorch.sh", "executorch_worker.py"),
}


class RuntimeFailed(RuntimeError):
    """The runtime ran and failed; the message ends with the tail of its log, ``log`` holds all of it."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message)
        self.log = log


def runtime_env() -> dict[str, str]:
    """The environment of a runtime's processes: no trace of this venv, no hub, one thread unless told."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1"})
    return env


@functools.lru_cache(maxsize=None)
def _find(name: str) -> tuple[Path | None, str]:
    rt = RUNTIMES[name]
    python = rt.venv() / "bin" / "python"
    hint = f"install it with `{rt.install}` (a venv of its own, {rt.default_venv})"
    if not python.exists():
        return None, f"{rt.label} is not installed (no {python}); {hint}"
    check = subprocess.run([str(python), "-c", rt.check], capture_output=True, text=True, env=runtime_env(),
                           timeout=300)
    if check.returncode != 0:
        last = (check.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"{rt.label} does not import from {python} ({last}); {hint}"
    return python, check.stdout.strip().splitlines()[-1]


def need_runtime(name: str) -> Path:
    """The python of the runtime's venv; skips the test when there is none, fails it when the runtime's
    HOPSCOTCH_REQUIRE_* variable is 1."""
    python, why = _find(name)
    if python is None:
        if os.environ.get(RUNTIMES[name].require_env) == "1":
            pytest.fail(f"{RUNTIMES[name].require_env}=1 but {why}")
        pytest.skip(why)
    return python


def run_worker(name: str, job: dict, work_dir=None) -> dict:
    """Run the runtime's worker on ``job`` in its venv (its own process group, killed however the call ends)."""
    python = need_runtime(name)
    worker = Path(__file__).with_name(RUNTIMES[name].worker)
    with tempfile.TemporaryDirectory(prefix=f"hopscotch-{name}-", dir=work_dir) as tmp:
        tmp = Path(tmp)
        job_path, out, log = tmp / "job.json", tmp / "out.json", tmp / "worker.log"
        job_path.write_text(json.dumps(job))
        with open(log, "w") as f:
            proc = subprocess.Popen([str(python), str(worker), str(job_path), str(out)], stdout=f,
                                    stderr=subprocess.STDOUT, env=runtime_env(), cwd=tmp, start_new_session=True)
            try:
                rc = proc.wait(timeout=WORKER_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                rc = "timed out"
            finally:
                _kill_group(proc)
        if rc != 0 or not out.exists():
            raise RuntimeFailed(f"{RUNTIMES[name].label} worker on {job} exited with {rc}; the end of its log:\n"
                                f"{_tail(log)}", log.read_text(errors="replace"))
        return {**json.loads(out.read_text()), "log": log.read_text(errors="replace")}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def lower_cached(python: Path, dirs: list[Path], context: int) -> list[bool]:
    """``model.pte`` in each executorch export directory, made by ``lower_exports`` (ExecuTorch's Llama export) in
    one ExecuTorch process for those not cached; returns, per directory, whether it came from the cache.

    The cache (``$HOPSCOTCH_CACHE/executorch-pte``; ``HOPSCOTCH_PTE_CACHE=0`` turns it off) is keyed by everything
    the .pte is made from: the bytes of model.pth and params.json, executorch_pte.py, the ExecuTorch venv (its
    resolved path names executorch's and torch's versions) and the context; the lowering is deterministic, so a hit
    is the file a fresh export would write. It saves CI the minutes ExecuTorch's export takes on SmolLM2."""
    from hopscotch.export.executorch_export import CHECKPOINT, PARAMS, PTE, PTE_SCRIPT, lower_exports
    from hopscotch.models import cache_dir

    use_cache = os.environ.get("HOPSCOTCH_PTE_CACHE", "1") != "0"
    root = cache_dir() / "executorch-pte"
    keys = []
    for d in dirs:
        h = hashlib.sha256()
        for part in (_sha256(d / CHECKPOINT), _sha256(d / PARAMS), _sha256(PTE_SCRIPT),
                     str(Path(python).resolve().parents[1]), str(context)):
            h.update(part.encode())
        keys.append(root / f"{h.hexdigest()[:32]}.pte")
    missing = [d for d, k in zip(dirs, keys) if not (use_cache and k.is_file())]
    if missing:
        lower_exports(python, missing, context=context, log=Path(missing[0]).parent / f"lower-{missing[0].name}.log")
    hits = []
    for d, k in zip(dirs, keys):
        hits.append(d not in missing)
        if d in missing and use_cache:
            root.mkdir(parents=True, exist_ok=True)
            tmp = k.with_suffix(f".{os.getpid()}.partial")
            shutil.copyfile(d / PTE, tmp)
            os.replace(tmp, k)
        elif d not in missing:
            shutil.copyfile(k, d / PTE)
    return hits


def smollm2_with_prompts(prompts: list[str]):
    """The packaged SmolLM2 (float32), its tokenizer, and ``prompts`` as chat-template token ids; skips the test
    when the model is not installed."""
    from hopscotch.models import load_model

    try:
        model, tok = load_model(None)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    ids = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=True, add_generation_prompt=True,
                                   return_dict=True)["input_ids"] for p in prompts]
    return model, tok, ids


def patched_greedy(model, plan, prompts: list[list[int]], new_tokens: int) -> list[dict]:
    """The patched model's greedy tokens (float32, its own KV cache), the log-softmax of its logits at each, and each
    step's margin between its two most likely tokens (log-probabilities)."""
    from hopscotch import apply_plan, unpatch_model

    apply_plan(model, plan)
    refs = []
    try:
        with torch.no_grad():
            for ids in prompts:
                x = torch.tensor([ids])
                out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens, do_sample=False,
                                     output_logits=True, return_dict_in_generate=True)
                tokens = out.sequences[0, len(ids):].tolist()
                lps = [torch.log_softmax(step[0].double(), -1) for step in out.logits]
                # generate() stops at the model's end-of-sequence token; a runtime asked for new_tokens goes on
                refs.append({"tokens": tokens, "logprobs": [lp[t].item() for lp, t in zip(lps, tokens)],
                             "margins": [float(lp.topk(2).values.diff().abs()) for lp in lps],
                             "stopped": len(tokens) < new_tokens})
    finally:
        unpatch_model(model)
    return refs


def compare_greedy(got: list[dict], refs: list[dict], tol: float, prompts_text=None) -> list[float]:
    """Asserts equal tokens on every prompt (up to the reference's end-of-sequence token, where generate() stopped)
    and log-probabilities within ``tol``; returns each prompt's largest log-probability difference."""
    assert len(got) == len(refs) >= 1
    diffs = []
    for i, (g, r) in enumerate(zip(got, refs)):
        where = f"prompt {i}" + (f" ({prompts_text[i]!r})" if prompts_text else "")
        got = g["tokens"][:len(r["tokens"])] if r.get("stopped") else g["tokens"]  # equal up to the reference's end
        assert got == r["tokens"], f"{where}: {g['tokens']} != {r['tokens']}"
        diffs.append(max(abs(a - b) for a, b in zip(g["logprobs"], r["logprobs"])))
        assert diffs[-1] <= tol, f"{where}: max |logprob diff| {diffs[-1]:.2e} > {tol}"
    return diffs
