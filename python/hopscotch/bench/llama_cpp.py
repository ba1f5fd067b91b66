"""llama.cpp: run an exported GGUF (through llama-cpp-python), and benchmark the full vs the thin model in it.

``LlamaCpp`` wraps one loaded file: ``logits(ids)`` for every position, ``greedy(ids, n)``; ``exact=True`` keeps
the KV cache in float32 and flash attention off (the CPU flash-attention kernel rounds K/V/Q to f16), for
comparisons with a float32 reference. Install llama.cpp with ``bash scripts/install_llama_cpp.sh``.

The benchmark (``run_llama_cpp_bench``; ``python benchmarks/bench_llama_cpp.py``) exports the model once in full
and once per k with the last k attention blocks skipped (which blocks does not change the speed), loads all of
them, and measures prompt processing (a ``context``-token prompt) and decoding (``new_tokens`` single-token steps
after it) for each, the cases interleaved over ``rounds`` rounds. Speed-ups are against the full model in the
same run: the median over rounds of each round's full/thin time ratio (steadier than a ratio of medians when the
machine's speed drifts between rounds). k = 0 is a second copy of the full model: its row is the noise floor.
The ideal decode speed-up is the ratio of bytes read per decoded token (every weight once, the embedding row
aside, plus the KV cache of the kept attention layers at the mean decode context); the ideal prompt speed-up is
the ratio of FLOPs per prompt token (weights plus attention scores over the mean causal context).
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["LlamaCpp", "LlamaCppBenchConfig", "LlamaCppMissing", "gguf_costs", "llama_cpp_versions",
           "require_llama_cpp", "run_llama_cpp_bench"]

INSTALL_HINT = "install it with `bash scripts/install_llama_cpp.sh` (llama-cpp-python built from source)"


class LlamaCppMissing(ImportError):
    """llama-cpp-python (llama.cpp) is not installed or does not load."""


def require_llama_cpp():
    """The ``llama_cpp`` module, or LlamaCppMissing saying why not and how to install it."""
    try:
        import llama_cpp
    except (ImportError, OSError, RuntimeError) as exc:  # RuntimeError: the bundled library does not load
        raise LlamaCppMissing(f"llama.cpp is not available ({exc}); {INSTALL_HINT}") from exc
    return llama_cpp


def llama_cpp_versions() -> dict:
    llama_cpp = require_llama_cpp()
    commit = Path(llama_cpp.__file__).with_name("lib") / "llama.cpp-commit"
    return {"llama_cpp_python": llama_cpp.__version__,
            "llama_cpp_commit": commit.read_text().strip()[:12] if commit.is_file() else "unknown"}


class LlamaCpp:
    """One GGUF file loaded in llama.cpp, CPU only."""

    def __init__(self, path: str | os.PathLike, *, n_ctx: int = 512, exact: bool = False, logits_all: bool = False,
                 threads: int | None = None, flash_attn: bool | None = None):
        llama_cpp = require_llama_cpp()
        kw = {}
        if exact:
            kw = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32}
            flash_attn = False if flash_attn is None else flash_attn
        threads = threads or os.cpu_count() or 1
        self.path = Path(path)
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=512, n_ubatch=512,
                                   logits_all=logits_all, n_threads=threads, n_threads_batch=threads,
                                   flash_attn=bool(flash_attn), n_gpu_layers=0, verbose=False, **kw)

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close()
            self.llm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=False, special=True)

    def metadata(self) -> dict:
        return dict(self.llm.metadata)

    def eval(self, ids: list[int], *, reset: bool = False) -> None:
        if reset:
            self.llm.reset()
        self.llm.eval(list(ids))

    def logits(self, ids: list[int]) -> np.ndarray:
        """[len(ids), vocab] logits of a fresh sequence (needs ``logits_all=True``)."""
        self.eval(ids, reset=True)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def last_logits(self) -> np.ndarray:
        """The logits after the last evaluated token (what llama.cpp computed for it, whatever ``logits_all``)."""
        llama_cpp = require_llama_cpp()
        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),)).copy()

    def greedy(self, ids: list[int], new_tokens: int) -> list[int]:
        """Greedy continuation of a fresh sequence, by argmax of llama.cpp's logits."""
        self.eval(ids, reset=True)
        out = []
        for _ in range(new_tokens):
            out.append(int(np.argmax(self.last_logits())))
            self.eval(out[-1:])
        return out


def gguf_costs(path: str | os.PathLike) -> dict:
    """From a GGUF file: weight bytes read per decoded token, weight FLOPs per token, kept attention layers and
    the KV row width (n_kv_heads * head_dim summed over layers)."""
    import gguf

    reader = gguf.GGUFReader(path)
    arch = reader.fields["general.architecture"].contents()
    tensors = {t.name: t for t in reader.tensors}
    weight_bytes = sum(int(t.n_bytes) for t in tensors.values())
    flops = sum(2 * int(t.n_elements) for n, t in tensors.items() if len(t.shape) == 2 and n != "token_embd.weight")
    if "output.weight" in tensors:  # untied head: only one embedding row is read per token
        emb = tensors["token_embd.weight"]
        weight_bytes -= int(emb.n_bytes) - int(emb.n_bytes) // int(emb.shape[-1])
    else:
        flops += 2 * int(tensors["token_embd.weight"].n_elements)  # the tied head is a matmul over it
    kv_heads = reader.fields[f"{arch}.attention.head_count_kv"].contents()
    heads = reader.fields[f"{arch}.attention.head_count"].contents()
    n_layers = reader.fields[f"{arch}.block_count"].contents()
    kv_heads = kv_heads if isinstance(kv_heads, list) else [kv_heads] * n_layers
    heads = heads if isinstance(heads, list) else [heads] * n_layers
    head_dim = reader.fields[f"{arch}.attention.key_length"].contents()
    return {"weight_bytes": weight_bytes, "weight_flops": flops, "kv_layers": sum(1 for h in kv_heads if h),
            "kv_width": sum(kv_heads) * head_dim, "q_width": sum(heads) * head_dim}


def decode_bytes(costs: dict, context: int, kv_bytes_per_value: int = 2) -> float:
    """Bytes read per decoded token at ``context`` tokens: weights + K and V of the kept layers."""
    return costs["weight_bytes"] + 2 * costs["kv_width"] * context * kv_bytes_per_value


def prompt_flops(costs: dict, context: int) -> float:
    """FLOPs per prompt token of a ``context``-token prompt: weights + QK^T and PV over the mean causal span."""
    return costs["weight_flops"] + 2 * 2 * costs["q_width"] * (context + 1) / 2


@dataclass
class LlamaCppBenchConfig:
    ks: list[int] = field(default_factory=lambda: [0, 4, 8, 15])
    contexts: list[int] = field(default_factory=lambda: [512, 4096])
    new_tokens: int = 64
    rounds: int = 3
    dtype: str = "f16"
    flash_attn: bool = True  # llama.cpp's own default ("auto") turns it on for the CPU
    threads: int | None = None
    seed: int = 0


def _export_all(model, ks: list[int], dtype: str, out_dir: Path) -> dict:
    from ..export.gguf_export import export_gguf
    from ..plan import SkipPlan

    n = model.config.num_hidden_layers
    paths = {"full": export_gguf(model, SkipPlan.for_model(model, [], [], method="none"), out_dir / "full.gguf",
                                 dtype=dtype, overwrite=True)}
    for k in ks:
        if not 0 <= k < n:
            raise ValueError(f"k = {k}: expected 0 <= k < {n} (attention block 0 cannot be skipped in gguf)")
        plan = SkipPlan.for_model(model, list(range(n - k, n)), [], method="last-k")
        paths[k] = export_gguf(model, plan, out_dir / f"thin-k{k}.gguf", dtype=dtype, overwrite=True)
    return paths


def run_llama_cpp_bench(model, cfg: LlamaCppBenchConfig, work_dir: str | os.PathLike,
                        progress: bool = True) -> list[dict]:
    """Rows (one per phase, context and k) of the full-vs-thin benchmark; see the module docstring."""
    paths = _export_all(model, cfg.ks, cfg.dtype, Path(work_dir))
    costs = {key: gguf_costs(p) for key, p in paths.items()}
    n_ctx = max(cfg.contexts) + cfg.new_tokens
    runners = {key: LlamaCpp(p, n_ctx=n_ctx, threads=cfg.threads, flash_attn=cfg.flash_attn)
               for key, p in paths.items()}
    rng = np.random.default_rng(cfg.seed)
    vocab = model.config.vocab_size
    prompts = {c: rng.integers(10, vocab, c).tolist() for c in cfg.contexts}
    steps = rng.integers(10, vocab, cfg.new_tokens).tolist()
    times: dict[tuple, list[float]] = {}
    keys = list(runners)
    try:
        for run in runners.values():  # untimed: page the weights in, size the compute buffers
            run.eval(prompts[min(cfg.contexts)][:64], reset=True)
            run.eval(steps[:4])
        for r in range(cfg.rounds):
            order = keys[r % len(keys):] + keys[: r % len(keys)]  # rotate who goes first
            for c in cfg.contexts:
                for key in order:
                    run = runners[key]
                    run.llm.reset()
                    t0 = time.perf_counter()
                    run.eval(prompts[c])
                    t1 = time.perf_counter()
                    for tok in steps:
                        run.eval([tok])
                    t2 = time.perf_counter()
                    times.setdefault(("prompt", c, key), []).append(t1 - t0)
                    times.setdefault(("decode", c, key), []).append(t2 - t1)
                    if progress:
                        print(f"  round {r + 1}/{cfg.rounds} context {c} {key if key == 'full' else f'k={key}'}: "
                              f"prompt {c / (t1 - t0):.0f} tok/s, decode {cfg.new_tokens / (t2 - t1):.1f} tok/s",
                              flush=True)
    finally:
        for run in runners.values():
            run.close()
        gc.collect()
    rows = []
    for (phase, c, key), ts in times.items():
        if key == "full":
            continue
        tokens = c if phase == "prompt" else cfg.new_tokens
        full_s, thin_s = statistics.median(times[(phase, c, "full")]), statistics.median(ts)
        speedup = statistics.median(f / t for f, t in zip(times[(phase, c, "full")], ts))
        if phase == "decode":  # memory-bound: bytes read per token at the mean decode context
            cost_full, cost_thin = (decode_bytes(costs[m], c + cfg.new_tokens / 2) for m in ("full", key))
        else:  # compute-bound: FLOPs per prompt token
            cost_full, cost_thin = (prompt_flops(costs[m], c) for m in ("full", key))
        ideal = cost_full / cost_thin
        rows.append({"engine": "llama.cpp", "phase": phase, "k": key, "context": c, "tokens": tokens,
                     "tok_s_full": tokens / full_s, "tok_s_thin": tokens / thin_s, "speedup": speedup,
                     "ideal_speedup": ideal, "ideal_basis": "bytes/token" if phase == "decode" else "flops/token",
                     "cost_full": cost_full, "cost_thin": cost_thin, "kv_layers_thin": costs[key]["kv_layers"],
                     "skipped": f"last {key}", "rounds": cfg.rounds, "ms_full_all": _ms(times[(phase, c, "full")]),
                     "ms_thin_all": _ms(ts), "model_dtype": cfg.dtype, "kv_dtype": "f16",
                     "flash_attn": cfg.flash_attn, "threads": cfg.threads or os.cpu_count(),
                     "model": Path(getattr(model.config, "_name_or_path", "") or "model").name,
                     **llama_cpp_versions()})
    return sorted(rows, key=lambda r: (r["phase"], r["context"], r["k"]))


def _ms(ts: list[float]) -> str:
    return " ".join(f"{t * 1e3:.0f}" for t in ts)
