"""A GPTQ checkpoint of the packaged SmolLM2-135M-Instruct, made with gptqmodel (4-bit, group 128).

    GPTQMODEL_CPU_WORKERS=2 python benchmarks/gptq_checkpoint.py --out DIR     # ~8 minutes on 2 CPU cores

Run it in a venv that has gptqmodel (its pins differ from the package's: a venv of its own) with hopscotch on
the path (``PYTHONPATH=<tree>/python``). The float32 model is the packaged GGUF's dequantized weights
(``hopscotch.models.converted_model_dir``); calibration: --texts Wikipedia summaries of the calibration half
(disjoint from the evaluation half the quality studies' perplexity uses). The checkpoint is what
benchmarks/bench_quantized.py (``--schemes gptq``), tests/test_export_gptq.py (``HOPSCOTCH_GPTQ_DIR``) and
``hopscotch.export.gptq`` take.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the checkpoint's directory (made; must not exist)")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--texts", type=int, default=128, help="calibration texts (Wikipedia summaries)")
    args = p.parse_args(argv)
    if os.path.exists(args.out):
        p.error(f"--out {args.out} exists; expected a new directory")
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(min(2, os.cpu_count() or 1)))
    from gptqmodel import GPTQModel, QuantizeConfig

    from hopscotch.data.wikipedia import wikipedia_split
    from hopscotch.models import converted_model_dir, load_model

    load_model(None, with_tokenizer=False)  # makes the float32 checkpoint once
    texts = [d.text for d in wikipedia_split(calibration=0.5).calibration[:args.texts]]
    t0 = time.perf_counter()
    model = GPTQModel.load(str(converted_model_dir()), QuantizeConfig(bits=args.bits, group_size=args.group_size))
    model.quantize(texts)
    model.save(args.out)
    print(f"quantized in {time.perf_counter() - t0:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
