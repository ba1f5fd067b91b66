"""Runs every hopscotch_ext op once per path on odd shapes, then patched decode steps: what gpu_suite.sh puts
under compute-sanitizer (memcheck on all of it; racecheck on the norm kernels, the only ones with shared memory).
Every call is checked against the op's pure-torch reference, and every decode step against a forward without a
cache, so a wrong result fails here even where the sanitizer sees nothing.

    python benchmarks/gpu_suite_ops.py [--device cuda|cpu] [--only rms_norm,scaled_add_rms_norm]
"""

from __future__ import annotations

import argparse
import sys

import torch

import hopscotch_ext
from hopscotch_ext import reference as R


def _cases(device: str):
    """(name, call of the op, the same call on the reference); fresh inputs for every case."""
    g = torch.Generator().manual_seed(0)

    def rnd(*shape, dtype=torch.bfloat16, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype).to(device)

    def table(rows, rot):
        inv = 1.0 / (10000.0 ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))
        f = torch.outer(torch.arange(rows, dtype=torch.float64), inv)
        return torch.cat([f.cos(), f.sin()], -1).float().to(device)

    cases = []
    for hidden in (769, 4096):  # a partial vector chunk per row; a real model's
        x, res, w = rnd(5, hidden), rnd(5, hidden), rnd(hidden, scale=0.1) + 1
        b, s = torch.tensor(0.7, device=device), torch.tensor(1.3, device=device)
        cases.append((f"rms_norm h{hidden}", lambda x=x, w=w: hopscotch_ext.rms_norm(x, w, 1e-6),
                      lambda x=x, w=w: R.rms_norm_ref(x, w, 1e-6)))
        args = (x, res, w, b, s, 1e-6)
        cases.append((f"scaled_add_rms_norm h{hidden}", lambda a=args: hopscotch_ext.scaled_add_rms_norm(*a),
                      lambda a=args: R.scaled_add_rms_norm_ref(*a)))

        def inplace(x=x, res=res, w=w, b=b, s=s, ref=False):
            xx, rr = x.clone(), res.clone()
            (R.scaled_add_rms_norm_inplace_ref if ref else hopscotch_ext.scaled_add_rms_norm_)(xx, rr, w, b, s, 1e-6)
            return xx, rr

        cases.append((f"scaled_add_rms_norm_ h{hidden}", inplace, lambda f=inplace: f(ref=True)))
        cases.append((f"silu_and_mul h{hidden}", lambda h=hidden: hopscotch_ext.silu_and_mul(gu_in[h]),
                      lambda h=hidden: R.silu_and_mul_ref(gu_in[h])))
    gu_in = {h: rnd(5, 2 * h) for h in (769, 4096)}
    for tokens in (1, 3, 16, 17):  # the fused decode kernel (<= 16 tokens on CUDA) and the GEMM path
        xm, wm, bm = rnd(tokens, 576), rnd(2 * 1536, 576, scale=0.05), rnd(2 * 1536, scale=0.1)
        cases.append((f"silu_gate_up t{tokens}", lambda xm=xm, wm=wm, bm=bm: hopscotch_ext.silu_gate_up(xm, wm, bm),
                      lambda xm=xm, wm=wm, bm=bm: R.silu_gate_up_ref(xm, wm, bm)))
    for hs, rot in ((128, 128), (48, 20)):  # the 16-byte path and the scalar path
        cache = table(300, rot)
        pos = torch.randint(0, 300, (3, 7), generator=g).to(device)

        def rot_in_place(cache=cache, pos=pos, qk=(rnd(3, 7, 8, hs), rnd(3, 7, 2, hs)), ref=False):
            q, k = (t.clone() for t in qk)
            (R.rotary_embedding_ref if ref else hopscotch_ext.rotary_embedding)(pos, q, k, cache)
            return q, k

        cases.append((f"rotary_embedding d{hs}", rot_in_place, lambda f=rot_in_place: f(ref=True)))
        xr = rnd(3, 7, 8, hs)
        cases.append((f"rotary_embedding_out d{hs}",
                      lambda xr=xr, cache=cache, pos=pos: hopscotch_ext.rotary_embedding_out(pos, xr, cache, True),
                      lambda xr=xr, cache=cache, pos=pos: R.rotary_embedding_out_ref(pos, xr, cache, True)))

        def rot_cache(hs=hs, cache=cache, pos=pos, fused=rnd(3, 7, 12 * hs), ref=False):
            qkv = fused.clone()  # q, k, v as strided views of one fused projection, as the model makes them
            q, k, v = (qkv[..., a * hs:b * hs].view(3, 7, -1, hs) for a, b in ((0, 8), (8, 10), (10, 12)))
            kc, vc = torch.zeros(3, 2, 29, hs, dtype=q.dtype, device=device), torch.zeros(3, 2, 29, hs,
                                                                                         dtype=q.dtype, device=device)
            slots = torch.arange(20, 27, device=device)
            fn = R.rotary_embedding_kv_cache_ref if ref else hopscotch_ext.rotary_embedding_kv_cache
            fn(pos, q, k, v, cache, kc, vc, slots)
            return q, kc, vc

        cases.append((f"rotary_embedding_kv_cache d{hs}", rot_cache, lambda f=rot_cache: f(ref=True)))
    return cases


def _flat(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _decode_step(device: str) -> None:
    """A patched tiny Llama: the prefill against the unpatched model; then, block 0 skipped and a cache that grows on
    the way, every decode step's logits against the same model run on the whole sequence without a cache."""
    from hopscotch.hf_compat import cache_kwargs
    from hopscotch.patch import HopscotchCache, patch_model, set_skips
    from hopscotch.testing import tiny_model

    tol = dict(rtol=0.05, atol=0.08)  # bfloat16 logits of a whole model (tests/helpers/model_testing.py LOGIT_TOL)
    model = tiny_model("llama", num_layers=4, dtype=torch.bfloat16).to(device)
    ids = torch.randint(3, 97, (3, 11), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        ref = model(ids).logits
        patch_model(model)
        cache = HopscotchCache(capacity=16)
        out = model(ids, **cache_kwargs(cache), use_cache=True).logits
        torch.testing.assert_close(out, ref, **tol)
        set_skips(model, attention=[0])
        cache = HopscotchCache(capacity=8)  # grows on the way
        seq = ids
        nxt = model(ids, **cache_kwargs(cache), use_cache=True).logits[:, -1:].argmax(-1)
        for step in range(6):
            seq = torch.cat([seq, nxt], 1)
            got = model(nxt, **cache_kwargs(cache), use_cache=True).logits[:, -1]
            want = model(seq, use_cache=False).logits[:, -1]
            torch.testing.assert_close(got, want, **tol, msg=lambda m: f"decode step {step}: {m}")
            nxt = want.argmax(-1, keepdim=True)
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--only", default=None, help="run only the cases whose name starts with one of these "
                   "(comma-separated), and no decode step: e.g. racecheck on the kernels with shared memory")
    args = p.parse_args(argv)
    info = hopscotch_ext.info()
    if not info["loaded"] or (args.device == "cuda" and "cuda" not in info["backends"]):
        print(f"gpu_suite_ops: the compiled {args.device} kernels are not loaded: {info}", file=sys.stderr)
        return 1
    failed = 0
    only = tuple(args.only.split(",")) if args.only else None
    for name, op, ref in _cases(args.device):
        if only and not name.startswith(only):
            continue
        try:
            for a, b in zip(_flat(op()), _flat(ref())):
                torch.testing.assert_close(a, b, rtol=0.02, atol=0.02)
            print(f"ok    {name}")
        except Exception as exc:  # every op runs; the exit status reports
            failed += 1
            print(f"FAIL  {name}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    try:
        if not only:
            _decode_step(args.device)
            print("ok    patched decode steps (own cache, growth, skipped block 0; each step against no cache)")
    except Exception as exc:
        failed += 1
        print(f"FAIL  patched decode steps: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    if args.device == "cuda":
        torch.cuda.synchronize()
    print(f"gpu_suite_ops: {failed} failed on {args.device}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
