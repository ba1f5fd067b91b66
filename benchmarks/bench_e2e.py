"""End-to-end benchmark: HF unpatched vs HF with skipped attention as a Python identity vs hopscotch patched.

    python benchmarks/bench_e2e.py                        # SmolLM2 on CPU: k = 0, 4, 15 (L/2), batch 1 and 8
    python benchmarks/bench_e2e.py --ks 0,4,8,all         # the patch benchmark: k = 0, 4, 8 and all 30 skipped
    python benchmarks/bench_e2e.py --random-shape llama3-8b   # on a GPU: a Llama-3-8B-shaped model, bf16

The same as `hopscotch bench` (see `hopscotch bench --help` for every option); rows go to
benchmarks/results/e2e.csv with device, torch version, commit and time, and a PNG plot beside it.
"""

import sys

from hopscotch.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
