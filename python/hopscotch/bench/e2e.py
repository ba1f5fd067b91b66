"""End-to-end benchmark: prefill latency, decode throughput, KV-cache bytes and peak memory, same model, same run.

Providers, each on the same loaded weights:
  ``hf``                 the unpatched HF model and its DynamicCache (k is ignored: nothing skipped)
  ``hf_identity``        the unpatched model with the k skipped attention modules replaced by a Python identity
                         (returns zeros: what LLM-Drop's code does; no attention work, but the HF layer and cache)
  ``hopscotch``          the patched model (fused ops, its own HopscotchCache) with k attention blocks skipped
  ``hopscotch_compiled`` the same with each decode step under ``torch.compile(fullgraph=True)`` (on CUDA
                         ``mode="reduce-overhead"``: the step replays as a CUDA graph)
Skipped blocks are the last k (speed does not depend on which). Decode is a greedy loop of single-token forwards
on a cache filled by an untimed prefill, identical for every provider; ``fill="random"`` fills the cache with
random keys and values of the same shapes instead (decode costs the same whatever the values, and a long
prefill at a large batch takes minutes on a CPU). Ratios are against ``hf`` at the same batch size in the same run.
With ``rounds`` > 1 every case is measured once per round, the cases interleaved, and the repetitions of all rounds
are pooled: slow drifts of a shared machine then hit every case alike.
"""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass, field

import torch

from ..hf_compat import cache_kwargs
from ..patch import HopscotchCache, kv_cache_bytes, patch_model, set_skips, unpatch_model
from ..progress import Progress
from ..testing import zeroed_attention
from .choices import RANDOM_SHAPES
from ..utils import model_dtype
from .choices import FILLS, PROVIDERS
from .results import summarize_ms, synchronize, time_fn

__all__ = ["E2EConfig", "run_e2e", "attention_gain", "kv_bytes_per_token", "random_model", "speed_ratio", "PROVIDERS",
           "FILLS"]


@dataclass
class E2EConfig:
    ks: list[int] = field(default_factory=lambda: [0, 4])
    providers: list[str] = field(default_factory=lambda: list(PROVIDERS))
    prefill_batch: int = 1
    decode_batches: list[int] = field(default_factory=lambda: [1, 8])
    prompt_len: int = 512
    new_tokens: int = 64
    budget_s: float = 2.0  # time budget per timed measurement (at least min_reps repetitions)
    min_reps: int = 3
    rounds: int = 1  # passes over all cases, interleaved; repetitions pooled across rounds
    seed: int = 0
    fill: str = "prefill"  # how the decode cache is filled: "prefill" (computed) or "random" (same shapes)
    max_kv_bytes: int | None = None  # decode batches whose full-model KV cache would exceed this are skipped


@contextlib.contextmanager
def _provider(model, provider: str, skipped: list[int]):
    if provider == "hf":
        yield
    elif provider == "hf_identity":  # LLM-Drop's skip in HF's own layers: the block is an identity, not run
        with zeroed_attention(model, skipped):
            yield
    elif provider in ("hopscotch", "hopscotch_compiled"):
        patch_model(model)
        set_skips(model, attention=skipped, allow_no_attention=True)  # --ks all: the attention-free floor
        try:
            yield
        finally:
            unpatch_model(model)
    else:
        raise ValueError(f"unknown provider {provider!r}; expected one of {', '.join(PROVIDERS)}")


def _new_cache(model, provider: str, capacity: int):
    if provider.startswith("hopscotch"):
        return HopscotchCache(capacity=capacity)
    from transformers.cache_utils import DynamicCache

    return DynamicCache(config=model.config)


def _prompt(model, batch: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, model.config.vocab_size, (batch, length), generator=g).to(model.device)


@torch.no_grad()
def _prefill(model, ids, cache):
    out = model(input_ids=ids, **cache_kwargs(cache), use_cache=True, logits_to_keep=1)
    return out.logits[:, -1].argmax(-1, keepdim=True), cache


@torch.no_grad()
def _random_fill(model, provider: str, ids, cache, skipped: list[int], seed: int):
    """The cache a prefill of ``ids`` would leave, shapes and all, holding random keys and values."""
    cfg = model.config
    batch, length = ids.shape
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    dtype = model_dtype(model)
    g = torch.Generator(device=ids.device).manual_seed(seed)

    def rand():
        return torch.randn(batch, cfg.num_key_value_heads, length, head_dim, generator=g, device=ids.device,
                           dtype=dtype)

    if isinstance(cache, HopscotchCache):  # one forward of one token lays it out; then the slots are overwritten
        model(input_ids=ids[:, :1], **cache_kwargs(cache), use_cache=True, logits_to_keep=1)
        cache.crop(0)
        if cache.layers:  # none when every attention block is skipped (k = L): nothing to fill
            cache.reserve(batch, length)
            for block in cache.layers:
                block.key_buffer[:, :, :length] = rand()
                block.value_buffer[:, :, :length] = rand()
            cache.advance(length)
    else:
        for i in range(cfg.num_hidden_layers):
            if i not in skipped:
                cache.update(rand(), rand(), i)
    return ids[:, -1:], cache


@torch.no_grad()
def _decode(step, first, cache, steps: int):
    nxt = first
    for _ in range(steps):
        nxt = step(nxt, cache).argmax(-1)
    return cache


def _step_fn(model, provider: str, device):
    """One decode step, (next token ids [B, 1], cache) -> logits [B, 1, vocab]; compiled for hopscotch_compiled."""
    def step(nxt, cache):
        return model(input_ids=nxt, **cache_kwargs(cache), use_cache=True).logits[:, -1:]

    if provider != "hopscotch_compiled":
        return step
    torch._dynamo.reset()
    mode = "reduce-overhead" if torch.device(device).type == "cuda" else None
    return torch.compile(step, fullgraph=True, mode=mode)


def _repeatable_decode(step, first, cache, steps: int):
    """A decode of ``steps`` tokens that can be timed repeatedly: each run ends by putting the cache back to the
    prompt's entries (a HopscotchCache forgets the new tokens; a DynamicCache's ``update()`` concatenates into new
    tensors, so the saved ones are intact)."""
    if isinstance(cache, HopscotchCache):
        length = cache.get_seq_length()

        def run():
            _decode(step, first, cache, steps)
            cache.crop(length)

        return run
    saved = [(lay.keys, lay.values, getattr(lay, "cumulative_length", None)) for lay in cache.layers]

    def run():
        _decode(step, first, cache, steps)
        for lay, (keys, values, cum) in zip(cache.layers, saved):
            lay.keys, lay.values = keys, values
            if cum is not None:
                lay.cumulative_length = cum

    return run


def _peak_reset(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device):
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def run_e2e(model, cfg: E2EConfig, progress: bool = True) -> list[dict]:
    """Rows (one per provider, k, phase, batch) with median times, throughput and ratios vs ``hf``."""
    device = model.device
    L = model.config.num_hidden_layers
    for k in cfg.ks:
        if not 0 <= k <= L:
            raise ValueError(f"k={k} skipped blocks is out of range for a model with {L} layers")
    # hf runs once (it skips nothing); hf_identity at k=0 would be hf again.
    cases = [(p, k) for k in cfg.ks for p in cfg.providers
             if not (p == "hf" and k != cfg.ks[0]) and not (p == "hf_identity" and k == 0)]
    if cfg.rounds < 1:
        raise ValueError(f"rounds={cfg.rounds}: expected 1 or more")
    per_seq = (cfg.prompt_len + cfg.new_tokens) * kv_bytes_per_token(model.config, model_dtype(model), L)
    batches = [b for b in cfg.decode_batches if cfg.max_kv_bytes is None or b * per_seq <= cfg.max_kv_bytes]
    bar = Progress(cfg.rounds * len(cases) * (1 + len(batches)), "e2e benchmark", enabled=progress,
                   unit="measurement")
    found: dict[tuple, dict] = {}  # (provider, k, phase, batch) -> row without timings, plus pooled samples

    def record(row, t):
        key = (row["provider"], row["k"], row["phase"], row["batch"])
        found.setdefault(key, {**row, "samples": []})["samples"] += t["samples"]
        bar.update()

    if cfg.fill not in FILLS:
        raise ValueError(f"fill={cfg.fill!r}: expected one of {', '.join(FILLS)}")
    timing = dict(warmup=1, min_reps=cfg.min_reps, budget_s=cfg.budget_s, keep_samples=True)
    capacity = cfg.prompt_len + cfg.new_tokens
    for _ in range(cfg.rounds):
        for provider, k in cases:
            skipped = list(range(L - k, L))
            k_row = 0 if provider == "hf" else k
            with _provider(model, provider, [] if provider == "hf" else skipped):
                if provider != "hopscotch_compiled":  # its prefill is the eager one
                    ids = _prompt(model, cfg.prefill_batch, cfg.prompt_len, cfg.seed)
                    _peak_reset(device)
                    t = time_fn(lambda: _prefill(model, ids, _new_cache(model, provider, capacity)), device, **timing)
                    record({"phase": "prefill", "provider": provider, "k": k_row, "batch": cfg.prefill_batch,
                            "tokens": cfg.prompt_len, "peak_mem_bytes": _peak(device)}, t)
                step = _step_fn(model, provider, device)
                for batch in batches:
                    ids = _prompt(model, batch, cfg.prompt_len, cfg.seed + batch)
                    cache = _new_cache(model, provider, capacity)
                    if cfg.fill == "random":
                        first, cache = _random_fill(model, provider, ids, cache, skipped if k_row else [], cfg.seed)
                    else:
                        first, cache = _prefill(model, ids, cache)
                    _peak_reset(device)
                    t = time_fn(_repeatable_decode(step, first, cache, cfg.new_tokens), device, **timing)
                    _decode(step, first, cache, cfg.new_tokens)
                    synchronize(device)
                    record({"phase": "decode", "provider": provider, "k": k_row, "batch": batch,
                            "tokens": cfg.new_tokens, "kv_cache_bytes": kv_cache_bytes(cache),
                            "peak_mem_bytes": _peak(device)}, t)
                    del cache
                    gc.collect()
    bar.close()
    rows = []
    for row in found.values():
        t = summarize_ms(row.pop("samples"))
        row.update(t)
        row["tokens_per_s"] = row["batch"] * row["tokens"] / (t["ms_median"] / 1e3)
        if row["phase"] == "decode":
            row["ms_per_token"] = t["ms_median"] / row["tokens"]
        rows.append(row)
    base = {(r["phase"], r["batch"]): r["ms_median"] for r in rows if r["provider"] == "hf"}
    for r in rows:
        ref = base.get((r["phase"], r["batch"]))
        r["speedup_vs_hf"] = round(ref / r["ms_median"], 3) if ref else ""
        r["model_layers"] = L
    return rows


def attention_gain(rows: list[dict], num_layers: int) -> list[dict]:
    """For hopscotch rows: the share of the ideal saving each k achieves.

    Attention time per block = (T(k=0) - T(k=L)) / L, both measured; the ideal time with k blocks skipped is
    T(k=0) - k * that. ``gain_vs_ideal`` = (T(0) - T(k)) / (T(0) - ideal(k)); 1.0 = every skipped block saved all
    of its attention time. Needs rows for k = 0 and k = L.
    """
    out = []
    t = {(r["phase"], r["batch"], r["k"]): r["ms_median"] for r in rows if r["provider"] == "hopscotch"}
    for (phase, batch, k), tk in sorted(t.items()):
        t0, tl = t.get((phase, batch, 0)), t.get((phase, batch, num_layers))
        if t0 is None or tl is None or k in (0, num_layers):
            continue
        saving = k * (t0 - tl) / num_layers
        out.append({"phase": phase, "batch": batch, "k": k, "ms_k0": t0, "ms_k": tk, "ms_all_skipped": tl,
                    "ideal_ms": t0 - saving, "gain_vs_ideal": round((t0 - tk) / saving, 3) if saving > 0 else ""})
    return out


def kv_bytes_per_token(config, dtype: torch.dtype, kept_layers: int) -> int:
    """KV-cache bytes one token costs: keys and values of every kept attention block."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_key_value_heads * head_dim * torch.finfo(dtype).bits // 8 * kept_layers


def speed_ratio(model, skipped_attention: list[int], *, prompt_len: int = 128, new_tokens: int = 32,
                batch: int = 1, budget_s: float = 1.0) -> dict:
    """Decode and prefill time of the unpatched model vs the patched one with these attention blocks skipped
    (same weights, same run). The model is left unpatched."""
    device = model.device
    out = {}
    for provider, skipped in (("hf", []), ("hopscotch", list(skipped_attention))):
        with _provider(model, provider, skipped):
            ids = _prompt(model, batch, prompt_len, 0)
            cap = prompt_len + new_tokens
            pre = time_fn(lambda: _prefill(model, ids, _new_cache(model, provider, cap)), device, warmup=1,
                          min_reps=3, budget_s=budget_s)
            first, cache = _prefill(model, ids, _new_cache(model, provider, cap))
            decode = _repeatable_decode(_step_fn(model, provider, device), first, cache, new_tokens)
            dec = time_fn(decode, device, warmup=1, min_reps=3, budget_s=budget_s)
            out[provider] = {"prefill_ms": pre["ms_median"], "decode_tokens_per_s": batch * new_tokens /
                             (dec["ms_median"] / 1e3)}
    out["prefill_speedup"] = out["hf"]["prefill_ms"] / out["hopscotch"]["prefill_ms"]
    out["decode_speedup"] = out["hopscotch"]["decode_tokens_per_s"] / out["hf"]["decode_tokens_per_s"]
    out["setting"] = {"prompt_len": prompt_len, "new_tokens": new_tokens, "batch": batch, "device": str(device)}
    return out


def random_model(shape: str, device, dtype):
    """A Llama model of the ``RANDOM_SHAPES[shape]`` configuration with random weights (SDPA attention), in eval
    mode: what ``hopscotch bench --random-shape`` times."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**RANDOM_SHAPES[shape])
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()
