"""`hopscotch doctor`: does the patch still work with the torch and transformers installed here?

In seconds, on a tiny random model of every supported architecture, it checks the things that break silently when
a dependency changes under the package:

* patched (nothing skipped) == original: logits;
* a skip == the original with that attention block replaced by an identity (``testing.zeroed_attention``);
* cached generation == uncached generation, with a skipped block 0 and left padding;
* generate() uses the model's own HopscotchCache, and it holds exactly the kept blocks' share of the bytes;
* the compiled kernels ran (not the pure-torch fallback): ops counted as they dispatch;
* once, not per architecture: each private part of transformers the patch leans on (``hf_compat.INTERNALS``).

Each check is one line; the exit status is non-zero when any check fails.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from collections import Counter
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["CheckResult", "OpCounter", "run_checks", "versions"]

# fp32 logits of a 5-layer tiny model: patched and HF round at different points (fused ops), a few float32 ulps
# amplified by depth. Measured max |diff| here ~5e-6 on logits of magnitude ~10; 1e-4 leaves room for other BLAS.
_ATOL = 1e-4


@dataclasses.dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str
    seconds: float


class OpCounter(TorchDispatchMode):
    """Counts every op that dispatches inside it, by namespace and name (``hopscotch_ext::rms_norm`` ...)."""

    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[f"{func.namespace}::{func._schema.name.split('::')[-1]}"] += 1
        return func(*args, **(kwargs or {}))

    def hopscotch_ops(self) -> Counter[str]:
        return Counter({k: v for k, v in self.counts.items() if k.startswith("hopscotch_ext::")})


def versions() -> dict[str, str]:
    import hopscotch_ext

    from .plan import package_versions

    info = hopscotch_ext.info()
    return {**package_versions(), "python": platform.python_version(),
            "kernels": ("compiled " + "+".join(info["backends"])) if info["loaded"]
            else f"pure-torch fallback ({info['load_error']})"}


def _ids(vocab: int, batch: int = 2, seq: int = 9, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding on the first row
    ids[0, :3] = 0
    return ids, mask


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _check_patched_equals_original(arch: str) -> str:
    from .patch import patch_model
    from .testing import tiny_model

    model = tiny_model(arch)
    ids, mask = _ids(model.config.vocab_size)
    ref = model(input_ids=ids, attention_mask=mask).logits
    patch_model(model)
    diff = _max_diff(model(input_ids=ids, attention_mask=mask).logits, ref)
    assert diff <= _ATOL, f"max |logit diff| {diff:.2e} > {_ATOL}"
    return f"max |logit diff| {diff:.1e}"


def _check_skip_equals_identity(arch: str) -> str:
    from .patch import patch_model, set_skips, unpatch_model
    from .testing import tiny_model, zeroed_attention

    model = tiny_model(arch)
    ids, mask = _ids(model.config.vocab_size)
    skips = [0, 3]
    with zeroed_attention(model, skips):
        ref = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    patch_model(model)
    set_skips(model, attention=skips)
    diff = _max_diff(model(input_ids=ids, attention_mask=mask).logits, ref)
    unpatch_model(model)
    assert diff <= _ATOL, f"attention blocks {skips} skipped: max |logit diff| {diff:.2e} > {_ATOL}"
    return f"blocks {skips} skipped, max |logit diff| {diff:.1e}"


def _check_cached_generation(arch: str) -> str:
    from .patch import patch_model, set_skips
    from .testing import greedy_without_cache, tiny_model

    model = tiny_model(arch)
    ids, mask = _ids(model.config.vocab_size)
    patch_model(model)
    set_skips(model, attention=[0, 2])
    new = 10
    cached = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0)
    uncached = greedy_without_cache(model, ids, mask, new, eos_id=model.config.eos_token_id, pad_id=0)
    same = torch.equal(cached, uncached)
    assert same, (f"generate() with the KV cache differs from recomputing without it: {cached[:, -new:].tolist()} vs "
                  f"{uncached[:, -new:].tolist()} (the cache is not reaching the patched forward)")
    return f"{new} tokens, blocks [0, 2] skipped, left padding"


def _check_compact_cache(arch: str) -> str:
    from .hf_compat import output_cache
    from .patch import HopscotchCache, patch_model, set_skips
    from .patch import kv_cache_bytes
    from .testing import tiny_model

    model = tiny_model(arch)
    ids, mask = _ids(model.config.vocab_size)
    new = 4
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0,
              return_dict_in_generate=True)
    n = model.config.num_hidden_layers
    skips = [0, 1, 4]
    patch_model(model)
    full_cache = output_cache(model.generate(**kw))
    set_skips(model, attention=skips)
    thin_cache = output_cache(model.generate(**kw))
    assert isinstance(thin_cache, HopscotchCache), \
        f"generate() on the patched model used a {type(thin_cache).__name__}, not the model's own HopscotchCache"
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    # Keys and values of every kept block for the generation's tokens (all but the last generated one), no more.
    per_block = 2 * ids.shape[0] * cfg.num_key_value_heads * (ids.shape[1] + new - 1) * head_dim * 4
    full, thin = kv_cache_bytes(full_cache), kv_cache_bytes(thin_cache)
    assert full == n * per_block, f"KV bytes {full} with nothing skipped; expected {n} blocks x {per_block}"
    assert len(thin_cache.layers) == n - len(skips), \
        f"the cache has {len(thin_cache.layers)} layers with {len(skips)} of {n} attention blocks skipped"
    assert thin * n == full * (n - len(skips)), \
        f"KV bytes {thin} with {len(skips)} of {n} blocks skipped; expected {full * (n - len(skips)) // n}"
    return f"{thin} of {full} bytes with {len(skips)}/{n} blocks skipped"


def _check_compiled_ops(arch: str) -> str:
    import hopscotch_ext

    from .patch import patch_model, set_skips
    from .testing import tiny_model

    model = tiny_model(arch)
    ids, mask = _ids(model.config.vocab_size)
    patch_model(model)
    set_skips(model, attention=[1])
    with OpCounter() as counter:
        model(input_ids=ids, attention_mask=mask)
    ops = counter.hopscotch_ops()
    info = hopscotch_ext.info()
    assert info["loaded"], f"the pure-torch fallback ran, not the compiled kernels ({info['load_error']})"
    assert ops, "no hopscotch_ext op was dispatched by the patched forward (the patch did not take)"
    return ", ".join(f"{k.split('::')[1]} x{v}" for k, v in sorted(ops.items()))


CHECKS: dict[str, Callable[[str], str]] = {
    "patched == original": _check_patched_equals_original,
    "skip == identity block": _check_skip_equals_identity,
    "cached == uncached generate": _check_cached_generation,
    "compact KV cache": _check_compact_cache,
    "compiled kernels ran": _check_compiled_ops,
}


@torch.no_grad()
def run_checks(archs=None, on_result: Callable[[str, CheckResult], None] | None = None) -> list[tuple[str, CheckResult]]:
    """Run every check on every tiny architecture; ``on_result(arch, result)`` is called as each finishes."""
    from .testing import TINY_ARCHS

    from .hf_compat import INTERNALS

    results = []
    for name, probe in INTERNALS.items():
        start = time.perf_counter()
        try:
            res = CheckResult(name, True, probe(), time.perf_counter() - start)
        except Exception as exc:  # reported like a failed check
            res = CheckResult(name, False, f"{type(exc).__name__}: {exc}", time.perf_counter() - start)
        results.append(("hf", res))
        if on_result is not None:
            on_result("hf", res)
    for arch in archs or TINY_ARCHS:
        for name, fn in CHECKS.items():
            start = time.perf_counter()
            try:
                res = CheckResult(name, True, fn(arch), time.perf_counter() - start)
            except Exception as exc:  # a failed check is reported, and the others still run
                res = CheckResult(name, False, f"{type(exc).__name__}: {exc}", time.perf_counter() - start)
            results.append((arch, res))
            if on_result is not None:
                on_result(arch, res)
    return results
