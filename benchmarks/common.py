"""The benchmarks' shared helpers live in the package (``hopscotch.bench.results``) so ``hopscotch bench`` can use
them too; this module re-exports them for the scripts in this folder, whose results go to benchmarks/results."""

import os
from pathlib import Path

os.environ.setdefault("HOPSCOTCH_RESULTS_DIR", str(Path(__file__).resolve().parent / "results"))

from hopscotch.bench.results import (RESULTS_DIR, append_results, copy_bandwidth_gbs, device_name, git_commit,  # noqa: F401
                                     metadata, synchronize, time_fn)
