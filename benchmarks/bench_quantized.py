"""Quantized SmolLM2 under hopscotch: does the patch hold, what memory does it take, how fast does it decode.

    python benchmarks/bench_quantized.py                          # torchao int8 / int4, bitsandbytes int8 / nf4
    python benchmarks/bench_quantized.py --schemes gptq --gptq-dir DIR   # a GPTQ checkpoint (needs gptqmodel)

Per scheme, each measurement in a fresh process (peak resident memory is per process):
- ``unpatched`` / ``patched``: load the packaged SmolLM2, quantize it, then a prompt of --prompt tokens and
  --new greedy tokens; resident memory once loaded and quantized (``rss_loaded_mb``), its peak from then on
  (``peak_rss_mb``: VmHWM, reset after loading through /proc/self/clear_refs, so the float32 load before
  quantizing is not counted) and decode tokens/s; ``patched`` also the resident memory after patching.
- ``check``: the patch's correctness (max |logit difference| against the unpatched model, greedy tokens equal,
  and with the last 4 attention blocks skipped, cached generation against recomputation without a cache), and
  decode speed: unpatched, patched and patched with 4 blocks skipped, interleaved over 3 rounds in one process,
  the median of each round's ratio.
Rows go to benchmarks/results/quantized.csv (machine, versions, load average in each row). Ratios are within
a scheme, same run: patched over unpatched.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

SCHEMES = ("torchao-int8", "torchao-int4", "bnb-int8", "bnb-nf4", "gptq")
PROMPT = "The history of the city begins in the Roman period, when a settlement grew up around the river crossing."


def _load(scheme: str, gptq_dir: str | None):
    import torch

    from hopscotch.models import converted_model_dir, load_model

    if scheme == "gptq":
        from gptqmodel import BACKEND, GPTQModel
        from transformers import AutoTokenizer

        # gptqmodel's torch kernel runs in float16 / bfloat16 only
        model = GPTQModel.load(gptq_dir, backend=BACKEND.TORCH, device="cpu", dtype=torch.bfloat16).model.eval()
        return model, AutoTokenizer.from_pretrained(gptq_dir)
    model, tok = load_model(None)
    if scheme.startswith("torchao"):
        import torchao.quantization as q

        config = (q.Int8WeightOnlyConfig() if scheme == "torchao-int8" else
                  q.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=q.PerGroup(32)))
        q.quantize_(model, config)
    elif scheme.startswith("bnb"):
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        cfg = (BitsAndBytesConfig(load_in_8bit=True) if scheme == "bnb-int8" else
               BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32))
        del model
        model = AutoModelForCausalLM.from_pretrained(converted_model_dir(), quantization_config=cfg,
                                                     dtype=torch.float32, device_map="cpu").eval()
    return model, tok


def _decode(model, ids, new: int) -> tuple[float, list[int]]:
    import torch

    with torch.no_grad():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False)  # warm
        t = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                             do_sample=False)
        dt = time.perf_counter() - t
    return new / dt, out[0, ids.shape[1]:].tolist()


def measure(scheme: str, mode: str, prompt: int, new: int, gptq_dir: str | None) -> dict:
    """One measurement, in this process: ``unpatched`` / ``patched`` (memory), or ``check`` (the patch's
    correctness and decode speed, unpatched and patched interleaved in this one process)."""
    import torch

    import hopscotch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    model, tok = _load(scheme, gptq_dir)
    ids = tok(PROMPT * 8, return_tensors="pt")["input_ids"][:, :prompt]
    gc.collect()
    row = {"scheme": scheme, "mode": mode, "rss_loaded_mb": _status_mb("VmRSS")}
    if mode == "check":
        row.update(_check(model, ids, new))
        return row
    if mode == "patched":
        hopscotch.patch_model(model)
        gc.collect()
        row["rss_patched_mb"] = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    row["rss_before_decode_mb"] = _status_mb("VmRSS")
    row["decode_tok_s"], _ = _decode(model, ids, new)
    row["peak_rss_mb"] = _status_mb("VmHWM")
    return row


def _check(model, ids, new: int, rounds: int = 3) -> dict:
    import statistics

    import torch

    import hopscotch
    from hopscotch.patch import set_skips
    from hopscotch.testing import greedy_without_cache

    out = {}
    with torch.no_grad():
        ref = model(ids).logits
    _, ref_tokens = _decode(model, ids, 16)
    hopscotch.patch_model(model)
    with torch.no_grad():
        out["max_logit_diff"] = float((model(ids).logits - ref).abs().max())
    out["greedy_equal"] = _decode(model, ids, 16)[1] == ref_tokens
    n = model.config.num_hidden_layers
    set_skips(model, attention=range(n - 4, n))
    short = ids[:, :32]
    with torch.no_grad():
        cached = model.generate(short, attention_mask=torch.ones_like(short), max_new_tokens=8, do_sample=False)
        recomputed = greedy_without_cache(model, short, torch.ones_like(short), 8, eos_id=None)
    out["cached_equals_recomputed"] = torch.equal(cached, recomputed)
    ratios = {"k0": [], "k4": []}
    for _ in range(rounds):  # interleaved: each round's ratios, then the median
        hopscotch.unpatch_model(model)
        base, _ = _decode(model, ids, new)
        hopscotch.patch_model(model)
        ratios["k0"].append(_decode(model, ids, new)[0] / base)
        set_skips(model, attention=range(n - 4, n))
        ratios["k4"].append(_decode(model, ids, new)[0] / base)
        out["decode_tok_s_unpatched"] = base
    out["decode_x_patched"] = statistics.median(ratios["k0"])
    out["decode_x_k4"] = statistics.median(ratios["k4"])
    return out


def _status_mb(key: str) -> float:
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith(key + ":"))
    return int(line.split()[1]) / 1024


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--schemes", default="torchao-int8,torchao-int4,bnb-int8,bnb-nf4",
                   help=f"comma-separated, of {', '.join(SCHEMES)}")
    p.add_argument("--gptq-dir", help="a GPTQ checkpoint of SmolLM2 (scheme gptq)")
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens (default 128)")
    p.add_argument("--new", type=int, default=32, help="decoded tokens timed (default 32)")
    p.add_argument("--csv", default="benchmarks/results/quantized.csv")
    p.add_argument("--one", nargs=2, metavar=("SCHEME", "MODE"), help=argparse.SUPPRESS)  # a child process
    args = p.parse_args(argv)
    if args.one:
        print("ROW " + json.dumps(measure(*args.one, args.prompt, args.new, args.gptq_dir)))
        return 0
    schemes = args.schemes.split(",")
    bad = [s for s in schemes if s not in SCHEMES]
    if bad:
        p.error(f"--schemes {','.join(bad)}: expected some of {', '.join(SCHEMES)}")
    if "gptq" in schemes and not args.gptq_dir:
        p.error("--schemes gptq needs --gptq-dir DIR (a GPTQ checkpoint of SmolLM2, e.g. from gptqmodel)")
    import torch
    import transformers

    rows = []
    for scheme in schemes:
        for mode in ("unpatched", "patched", "check"):
            cmd = [sys.executable, __file__, "--one", scheme, mode, "--prompt", str(args.prompt), "--new",
                   str(args.new)] + (["--gptq-dir", args.gptq_dir] if args.gptq_dir else [])
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("ROW ")), None)
            if line is None:
                err = (out.stderr.strip().splitlines() or ["no output"])[-1]
                print(f"{scheme} {mode}: failed: {err}")
                rows.append({"scheme": scheme, "mode": mode, "error": err})
                continue
            row = json.loads(line[4:])
            row.update(machine=platform.machine(), cpus=os.cpu_count(), load=round(os.getloadavg()[0], 1),
                       torch=torch.__version__, transformers=transformers.__version__)
            rows.append(row)
            print(json.dumps(row))
    for scheme in schemes:
        by = {r["mode"]: r for r in rows if r["scheme"] == scheme and "error" not in r}
        if {"unpatched", "patched", "check"} <= set(by):
            u, p_, c = by["unpatched"], by["patched"], by["check"]
            grow = {m: by[m]["peak_rss_mb"] - by[m]["rss_before_decode_mb"] for m in ("unpatched", "patched")}
            print(f"{scheme}: resident {u['rss_loaded_mb']:.0f} MB, patching adds "
                  f"{p_['rss_patched_mb'] - p_['rss_loaded_mb']:+.0f} MB; peak while decoding +{grow['unpatched']:.0f} "
                  f"-> +{grow['patched']:.0f} MB; decode x{c['decode_x_patched']:.2f} patched, "
                  f"x{c['decode_x_k4']:.2f} with 4 blocks skipped; max logit diff {c['max_logit_diff']:.3g}, "
                  f"greedy equal {c['greedy_equal']}, cached == recomputed {c['cached_equals_recomputed']}")
    path = Path(args.csv)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in rows for k in r})
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    print(f"rows in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
