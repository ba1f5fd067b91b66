"""One registration decides the implementation: the compiled kernels, or the references under the same schemas
(HOPSCOTCH_DISABLE_EXTENSION=1 or no _C); hopscotch_ext.functional picks in place vs out of place by itself."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import hopscotch_ext
from hopscotch_ext import functional as F
from hopscotch_ext import reference as R
from tests.helpers import ROOT
from tests.helpers.op_testing import EPS, gradient_probe, needs_extension



@needs_extension
def test_python_schema_table_matches_compiled_schemas():
    """hopscotch_ext.ops.SCHEMAS (what the fallback defines) == csrc/torch_bindings.cpp (what _C defines)."""
    registered = {name for name in dir(torch.ops.hopscotch_ext) if not name.startswith("_")}
    assert set(hopscotch_ext.ops.SCHEMAS) <= registered
    for name, schema in hopscotch_ext.ops.SCHEMAS.items():
        compiled = getattr(torch.ops.hopscotch_ext, name).default._schema
        assert compiled == torch._C.parse_schema(f"hopscotch_ext::{schema}"), (name, str(compiled), schema)
    ops_in_cpp = {line.split('"')[1].split("(")[0] for line in
                  (ROOT / "csrc" / "torch_bindings.cpp").read_text().splitlines() if "m.def(" in line
                  and '"' in line}
    assert ops_in_cpp <= set(hopscotch_ext.ops.SCHEMAS), ops_in_cpp - set(hopscotch_ext.ops.SCHEMAS)


@needs_extension
def test_compiled_kernels_serve_every_op_and_the_training_path():
    before = hopscotch_ext.reference_calls()
    gradient_probe()
    assert hopscotch_ext.reference_calls() == before, "a reference ran although the kernels are loaded"


_FALLBACK = textwrap.dedent("""
    import sys, warnings
    sys.path.insert(0, {root!r})
    warnings.simplefilter("ignore")
    import torch, hopscotch_ext
    from tests.helpers.op_testing import EPS, gradient_probe, opcheck_cases
    info = hopscotch_ext.info()
    assert not info["loaded"] and info["implementation"] == "reference", info
    assert not hopscotch_ext.reference_calls()
    for name in hopscotch_ext.ops.SCHEMAS:
        assert hasattr(torch.ops.hopscotch_ext, name), name
    for op, args in opcheck_cases("cpu"):
        torch.library.opcheck(op, args)
    calls = hopscotch_ext.reference_calls()
    assert set(calls) == set(hopscotch_ext.ops.SCHEMAS), calls
    torch.save(gradient_probe(), {out!r})

    # torch.compile sees the reference-backed ops as it sees the kernels: no graph break.
    import hopscotch_ext.functional as F
    def step(delta, res, w, x, wgu):
        normed, res = F.add_rms_norm(delta, res, w, torch.tensor(0.9), torch.tensor(1.1), EPS)
        return F.silu_gate_up(normed + x, wgu), res
    args = [torch.randn(3, 16), torch.randn(3, 16), torch.rand(16), torch.randn(3, 16), torch.randn(8, 16)]
    with torch.no_grad():
        eager = step(*[a.clone() for a in args])
        compiled = torch.compile(step, fullgraph=True)(*[a.clone() for a in args])
    for a, c in zip(eager, compiled):
        torch.testing.assert_close(a, c)
    print("fallback ok", dict(hopscotch_ext.reference_calls()))
""")


def test_fallback_registers_every_op_with_the_references(tmp_path):
    """HOPSCOTCH_DISABLE_EXTENSION=1: every op present, opcheck passes, the references (counted) ran, and the
    outputs and gradients match those of this process (the compiled kernels where they loaded)."""
    out = tmp_path / "probe.pt"
    env = {**os.environ, "HOPSCOTCH_DISABLE_EXTENSION": "1"}
    proc = subprocess.run([sys.executable, "-c", _FALLBACK.format(root=str(ROOT), out=str(out))], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "fallback ok" in proc.stdout
    fallback = torch.load(out)
    here = gradient_probe()
    assert fallback.keys() == here.keys()
    for key in here:
        torch.testing.assert_close(fallback[key], here[key], rtol=1e-4, atol=1e-5, msg=key)


# ---- hopscotch_ext.functional: in place without gradients, out of place with them ---------------------------


def _norm_inputs(requires_grad=False):
    g = torch.Generator().manual_seed(4)
    delta, res, w = torch.randn(2, 3, 64, generator=g), torch.randn(2, 3, 64, generator=g), torch.rand(64) + 0.5
    b, s = torch.tensor(0.9, requires_grad=requires_grad), torch.tensor(1.1, requires_grad=requires_grad)
    return delta, res, w, b, s


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_add_rms_norm_in_place_without_grad(dtype):
    delta, res, w, b, s = _norm_inputs()
    delta, res, w = delta.to(dtype), res.to(dtype), w.to(dtype)
    expect = R.scaled_add_rms_norm_ref(delta, res, w, b, s, EPS)
    for mode in (torch.no_grad, torch.inference_mode):
        d, r = delta.clone(), res.clone()
        with mode():
            normed, new_res = F.add_rms_norm(d, r, w, b, s, EPS)
        assert normed is d and new_res is r  # the buffers handed in, now holding the results
        torch.testing.assert_close(normed, expect[0])
        torch.testing.assert_close(new_res, expect[1])


def test_add_rms_norm_out_of_place_with_grad():
    delta, res, w, b, s = _norm_inputs(requires_grad=True)
    d0, r0 = delta.clone(), res.clone()
    normed, new_res = F.add_rms_norm(delta, res, w, b, s, EPS)
    assert normed is not delta and new_res is not res
    torch.testing.assert_close(delta, d0, rtol=0, atol=0)  # inputs untouched
    torch.testing.assert_close(res, r0, rtol=0, atol=0)
    (normed.sum() + new_res.square().sum()).backward()
    assert b.grad is not None and s.grad is not None


def test_rotate_qk_in_place_on_fused_qkv_views_and_out_of_place_with_grad():
    g = torch.Generator().manual_seed(6)
    bsz, seq, qh, kh, hd = 2, 5, 4, 2, 16
    cache = torch.randn(bsz * seq, hd, generator=g)
    pos = torch.arange(bsz * seq).view(bsz, seq)
    qkv = torch.randn(bsz, seq, (qh + 2 * kh) * hd, generator=g)
    q, k = qkv[..., : qh * hd].view(bsz, seq, qh, hd), qkv[..., qh * hd: (qh + kh) * hd].view(bsz, seq, kh, hd)
    q_exp, k_exp = R.apply_rotary_ref(q, pos, cache), R.apply_rotary_ref(k, pos, cache)
    # With gradients: copies, the fused buffer untouched.
    q_in = qkv.clone().requires_grad_()
    qg, kg = q_in[..., : qh * hd].view(bsz, seq, qh, hd), q_in[..., qh * hd: (qh + kh) * hd].view(bsz, seq, kh, hd)
    rq, rk = F.rotate_qk(qg, kg, pos, cache)
    torch.testing.assert_close(q_in.detach(), qkv, rtol=0, atol=0)
    torch.testing.assert_close(rq, q_exp)
    torch.testing.assert_close(rk, k_exp)
    (rq.sum() + rk.sum()).backward()
    assert q_in.grad is not None
    # Without: in place through the views.
    with torch.no_grad():
        rq2, rk2 = F.rotate_qk(q, k, pos, cache)
    assert rq2 is q and rk2 is k
    torch.testing.assert_close(q, q_exp)
    torch.testing.assert_close(k, k_exp)


def test_in_place_ops_refuse_inputs_that_need_grad():
    delta, res, w, b, s = _norm_inputs(requires_grad=True)
    with pytest.raises(RuntimeError, match="writes in place and has no backward"):
        hopscotch_ext.scaled_add_rms_norm_(delta, res, w, b, s, EPS)


def test_functional_block_compiles_fullgraph_in_both_modes():
    """A decoder-block-shaped function of the functional API: no graph break, eager == compiled, no grad (in
    place) and with grad (out of place)."""
    hidden, inter, heads, hd = 64, 96, 4, 16
    g = torch.Generator().manual_seed(8)
    w_norm = torch.rand(hidden, generator=g) + 0.5
    w_qk = torch.randn(2 * heads * hd, hidden, generator=g) * 0.1
    w_gu = torch.randn(2 * inter, hidden, generator=g) * 0.1
    cache = torch.randn(16, hd, generator=g)
    pos = torch.arange(10).view(2, 5)

    def block(delta, residual, b, s):
        normed, residual = F.add_rms_norm(delta, residual, w_norm, b, s, EPS)
        qk = torch.nn.functional.linear(normed, w_qk).view(2, 5, 2 * heads, hd)
        q, k = F.rotate_qk(qk[..., :heads, :], qk[..., heads:, :], pos, cache)
        h = F.rms_norm((q + k).flatten(-2) + residual, w_norm, EPS)
        return F.silu_gate_up(h, w_gu), residual

    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True)
    delta, res = torch.randn(2, 5, hidden, generator=g), torch.randn(2, 5, hidden, generator=g)
    with torch.no_grad():
        eager = block(delta.clone(), res.clone(), torch.tensor(0.9), torch.tensor(1.1))
        comp = compiled(delta.clone(), res.clone(), torch.tensor(0.9), torch.tensor(1.1))
    for a, c in zip(eager, comp):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)
    grads = []
    for fn in (block, compiled):
        b, s = torch.tensor(0.9, requires_grad=True), torch.tensor(1.1, requires_grad=True)
        out, _ = fn(delta, res, b, s)
        out.square().sum().backward()
        grads.append((b.grad, s.grad))
    for a, c in zip(*grads):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)
