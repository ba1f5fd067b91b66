"""Microbenchmarks of every hopscotch_ext op against its pure-torch reference, eager and compiled.

    pytest benchmarks/bench_ops.py --benchmark-disable-gc -q            # all defaults
    pytest benchmarks/bench_ops.py --ops scaled_add_rms_norm --tokens 512,4096 --dtypes bfloat16
    pytest benchmarks/bench_ops.py --ops silu_gate_up --tokens 1,8,64,512 --hidden 576,2048

silu_gate_up (the fused gated MLP up to down_proj) is compared with the unfused composition a model runs,
``F.linear`` + ``silu(gate) * up``, eager and compiled; its rows also carry TFLOP/s.

Every (op, dtype, tokens, hidden) is timed for each provider in the same run; a row per case goes to
benchmarks/results/ops.csv with the median time, GB/s, the speed-up over the eager reference and, on CUDA,
the fraction of the device's copy bandwidth measured in the same run.
"""

from __future__ import annotations

import functools

import pytest
import torch

import hopscotch_ext
from hopscotch_ext import reference as R

from common import append_results, copy_bandwidth_gbs, synchronize

# Intermediate (MLP) sizes of the models whose hidden sizes are the defaults; others use 8/3 x hidden.
_INTERMEDIATE = {576: 1536, 896: 4864, 2048: 8192, 4096: 14336}
_RESULTS: list[dict] = []


def _csv_list(s):
    return [x.strip() for x in s.split(",") if x.strip()]


def _device(config):
    return config.getoption("--device") or ("cuda" if torch.cuda.is_available() else "cpu")


def pytest_generate_tests(metafunc):
    cfg = metafunc.config
    device = _device(cfg)
    dtypes = cfg.getoption("--dtypes") or ("bfloat16" if device == "cuda" else "float32,bfloat16")
    cases = [(op, dt, int(t), int(h)) for op in _csv_list(cfg.getoption("--ops")) for dt in _csv_list(dtypes)
             for h in _csv_list(cfg.getoption("--hidden")) for t in _csv_list(cfg.getoption("--tokens"))]
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", cases, ids=[f"{o}-{d}-t{t}-h{h}" for o, d, t, h in cases])
    if "provider" in metafunc.fixturenames:
        metafunc.parametrize("provider", _csv_list(cfg.getoption("--providers")))


def _linear_silu_mul(x, w):
    """The unfused MLP up-projection of an HF model: one GEMM for [gate ; up], then silu(gate) * up."""
    gate, up = torch.nn.functional.linear(x, w).chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def _intermediate(hidden):
    return _INTERMEDIATE.get(hidden, (8 * hidden // 3 + 63) // 64 * 64)


def _setup(op, dtype, tokens, hidden, device):
    """(kernel callable, reference caller, reference function, bytes that must move) for one case."""
    g = torch.Generator().manual_seed(0)
    es = dtype.itemsize

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dtype).to(device)

    if op in ("scaled_add_rms_norm", "rms_norm"):
        x, res, w = rnd(tokens, hidden), rnd(tokens, hidden), rnd(hidden)
        b, s = torch.tensor(0.9, device=device), torch.tensor(1.1, device=device)
        if op == "rms_norm":
            return (lambda: hopscotch_ext.rms_norm(x, w, 1e-6)), (lambda f: f(x, w, 1e-6)), R.rms_norm_ref, \
                (2 * tokens * hidden + hidden) * es
        return (lambda: hopscotch_ext.scaled_add_rms_norm(x, res, w, b, s, 1e-6)), \
            (lambda f: f(x, res, w, b, s, 1e-6)), R.scaled_add_rms_norm_ref, (4 * tokens * hidden + hidden) * es
    if op == "silu_gate_up":
        inter = _intermediate(hidden)
        x, w = rnd(tokens, hidden), rnd(2 * inter, hidden) * hidden ** -0.5
        return (lambda: hopscotch_ext.silu_gate_up(x, w)), (lambda f: f(x, w)), _linear_silu_mul, \
            (2 * inter * hidden + tokens * (hidden + inter)) * es
    if op == "silu_and_mul":
        d = _intermediate(hidden)
        gu = rnd(tokens, 2 * d)
        return (lambda: hopscotch_ext.silu_and_mul(gu)), (lambda f: f(gu)), R.silu_and_mul_ref, 3 * tokens * d * es
    if op == "rotary_embedding":
        hs = 64 if hidden < 2048 else 128
        qh = max(1, hidden // hs)
        kh = max(1, qh // 4)
        q, k = rnd(tokens, qh, hs), rnd(tokens, kh, hs)
        pos = torch.randint(0, 8192, (tokens,), generator=g).to(device)
        cache = torch.randn(8192, hs, generator=g).to(device)
        moved = 2 * tokens * (qh + kh) * hs * es + tokens * (8 + hs * 4)
        return (lambda: hopscotch_ext.rotary_embedding(pos, q, k, cache)), (lambda f: f(pos, q, k, cache)), \
            R.rotary_embedding_ref, moved
    raise pytest.UsageError(f"unknown op {op!r}")


@functools.lru_cache(maxsize=None)
def _compiled(ref_fn):
    # dynamic=True: one compilation per op serves every shape (a per-shape compile would dominate the run).
    return torch.compile(ref_fn, dynamic=True)


@functools.lru_cache(maxsize=None)
def _copy_bw(device):
    return copy_bandwidth_gbs(device) if device == "cuda" else None


def test_op(benchmark, case, provider, request):
    op, dtype_name, tokens, hidden = case
    device = _device(request.config)
    dtype = getattr(torch, dtype_name)
    if provider == "hopscotch" and not hopscotch_ext.info()["loaded"]:
        pytest.skip("compiled extension not loaded")
    kernel, call_ref, ref_fn, nbytes = _setup(op, dtype, tokens, hidden, device)
    fn = {"hopscotch": kernel, "torch_eager": lambda: call_ref(ref_fn),
          "torch_compile": lambda: call_ref(_compiled(ref_fn))}[provider]

    def run():
        fn()
        synchronize(device)

    for _ in range(3):  # warm-up (and compilation) outside the timed rounds
        run()
    benchmark.group = f"{op}-{dtype_name}-t{tokens}-h{hidden}"
    benchmark.pedantic(run, rounds=max(5, min(100, int(2e8 // max(nbytes, 1)))), iterations=1, warmup_rounds=1)
    st = benchmark.stats.stats
    row = {"op": op, "provider": provider, "dtype": dtype_name, "tokens": tokens, "hidden": hidden,
           "ms_median": round(st.median * 1e3, 5), "ms_q20": round(st.q1 * 1e3, 5), "ms_q80": round(st.q3 * 1e3, 5),
           "gbs": round(nbytes / st.median / 1e9, 2)}
    if op == "silu_gate_up":
        row["tflops"] = round(2 * tokens * hidden * 2 * _intermediate(hidden) / st.median / 1e12, 4)
    bw = _copy_bw(device)
    if bw:
        row["copy_gbs"] = round(bw, 1)
        row["frac_of_copy_bw"] = round(row["gbs"] / bw, 3)
    _RESULTS.append(row)


@pytest.fixture(scope="session", autouse=True)
def _write_results(request):
    yield
    if not _RESULTS:
        return
    eager = {(r["op"], r["dtype"], r["tokens"], r["hidden"]): r["ms_median"] for r in _RESULTS
             if r["provider"] == "torch_eager"}
    for r in _RESULTS:
        base = eager.get((r["op"], r["dtype"], r["tokens"], r["hidden"]))
        r["speedup_vs_eager_ref"] = round(base / r["ms_median"], 3) if base else ""
    path = append_results(request.config.getoption("--results"), _RESULTS, _device(request.config))
    print(f"\nwrote {len(_RESULTS)} rows to {path}")
