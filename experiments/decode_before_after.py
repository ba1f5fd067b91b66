"""Decode ms/token, HF against the patched model, for whichever hopscotch is first on the path: the one question is
what issue 34's own cache changed, measured on the code before it and after it, each against HF in its own process.

    git worktree add /tmp/before ea67c2e && cp python/hopscotch_ext/_C*.so /tmp/before/python/hopscotch_ext/
    for side in /tmp/before/python python; do        # alternate the two sides, round after round
      OMP_NUM_THREADS=1 PYTHONPATH=$side python experiments/decode_before_after.py --model smollm2 --tag $side
    done

The same compiled kernels serve both sides (the change is in the Python decode path and one new kernel that the
code before never calls). In each process HF and the patched model (nothing skipped) alternate repetition by
repetition on caches filled with random keys and values of a prefill's shapes (a decode step costs the same
whatever the values): the code before gets a DynamicCache, as it did; the code after its own HopscotchCache. One
JSON line per (context, batch): medians and every repetition. The table: experiments/results/decode_before_after.md.
"""
import argparse, json, statistics, time, sys
import torch
import hopscotch
from hopscotch.hf_compat import cache_kwargs
from hopscotch.patch import patch_model, unpatch_model
from transformers.cache_utils import DynamicCache
try:
    from hopscotch.patch import HopscotchCache
except ImportError:
    HopscotchCache = None

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--model", default="tiny"); p.add_argument("--batches", default="1,16,64")
p.add_argument("--contexts", default="512"); p.add_argument("--steps", type=int, default=8)
p.add_argument("--reps", type=int, default=3); p.add_argument("--tag", default="")
a = p.parse_args()
if a.model == "tiny":
    from hopscotch.bench.e2e import random_model
    model = random_model("tiny", torch.device("cpu"), torch.float32)
else:
    from hopscotch.models import load_model
    model, _ = load_model(None)
model.eval()
cfg = model.config
hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
L = cfg.num_hidden_layers

def fill_dynamic(batch, ctx, g):
    c = DynamicCache(config=cfg)
    for i in range(L):
        c.update(torch.randn(batch, cfg.num_key_value_heads, ctx, hd, generator=g),
                 torch.randn(batch, cfg.num_key_value_heads, ctx, hd, generator=g), i)
    return c

def fill_own(batch, ctx, g):
    c = HopscotchCache(capacity=ctx + a.steps + 1)
    with torch.no_grad():
        model(torch.ones(batch, 1, dtype=torch.long), **cache_kwargs(c), use_cache=True)
    c.crop(0); c.reserve(batch, ctx)
    for b in c.layers:
        b.key_buffer[:, :, :ctx] = torch.randn(batch, cfg.num_key_value_heads, ctx, hd, generator=g)
        b.value_buffer[:, :, :ctx] = torch.randn(batch, cfg.num_key_value_heads, ctx, hd, generator=g)
    c.advance(ctx)
    return c

@torch.no_grad()
def one_rep(make_cache, batch, ctx, seed):
    g = torch.Generator().manual_seed(seed)
    cache = make_cache(batch, ctx, g)
    nxt = torch.randint(10, cfg.vocab_size, (batch, 1), generator=g)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        nxt = model(input_ids=nxt, **cache_kwargs(cache), use_cache=True).logits[:, -1:].argmax(-1)
    dt = time.perf_counter() - t0
    del cache
    return dt / a.steps * 1e3

own = HopscotchCache is not None
for ctx in [int(x) for x in a.contexts.split(",")]:
    for batch in [int(x) for x in a.batches.split(",")]:
        hf_t, pt_t = [], []
        for r in range(a.reps + 1):  # HF and patched alternate rep by rep; rep 0 warms both up
            h = one_rep(fill_dynamic, batch, ctx, r)
            patch_model(model)
            p_ = one_rep(fill_own if own else fill_dynamic, batch, ctx, r)
            unpatch_model(model)
            if r:
                hf_t.append(h); pt_t.append(p_)
        hf, pt = statistics.median(hf_t), statistics.median(pt_t)
        print(json.dumps({"tag": a.tag, "model": a.model, "ctx": ctx, "batch": batch, "hf_ms": round(hf, 3),
                          "patched_ms": round(pt, 3), "ratio": round(hf / pt, 3), "own_cache": own,
                          "hf_all": [round(x, 2) for x in hf_t], "patched_all": [round(x, 2) for x in pt_t]}),
              flush=True)
