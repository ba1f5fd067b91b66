"""Options for the pytest-benchmark microbenchmarks: shapes and dtypes come from the command line."""

from __future__ import annotations


def pytest_addoption(parser):
    group = parser.getgroup("hopscotch benchmarks")
    group.addoption("--hidden", default="576,896,2048,4096",
                    help="hidden sizes (SmolLM2-135M, Qwen2-0.5B, Llama-3.2-1B, Llama-3-8B by default)")
    group.addoption("--tokens", default="1,16,512,4096", help="token counts (decode to prefill)")
    group.addoption("--dtypes", default=None, help="dtypes; default float32,bfloat16 on CPU, bfloat16 on CUDA")
    group.addoption("--ops", default="scaled_add_rms_norm,rms_norm,silu_and_mul,rotary_embedding")
    group.addoption("--providers", default="hopscotch,torch_eager,torch_compile",
                    help="hopscotch = the kernel; torch_eager / torch_compile = its pure-torch reference")
    group.addoption("--device", default=None, help="cpu or cuda (default: cuda when available)")
    group.addoption("--results", default="ops.csv", help="CSV file under benchmarks/results/")
