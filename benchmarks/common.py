"""The benchmarks' shared helpers live in the package (``hopscotch.bench.results``) so ``hopscotch bench`` can use
them too; this module re-exports them for the scripts in this folder."""

from hopscotch.bench.results import (RESULTS_DIR, append_results, copy_bandwidth_gbs, device_name, git_commit,  # noqa: F401
                                     metadata, synchronize, time_fn)
