"""The ops as a library: autograd, opcheck, torch.compile, error messages, build info and the fallback."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import hopscotch_ext
from hopscotch_ext import reference as R
from tests.helpers.op_testing import EPS, DEVICES, needs_cuda_kernels, needs_extension, opcheck_cases


# ---- autograd -----------------------------------------------------------------------------------------


def test_gradcheck_scaled_add_rms_norm():
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(3, 5, 11, generator=g, dtype=torch.float64, requires_grad=True),
            torch.randn(3, 5, 11, generator=g, dtype=torch.float64, requires_grad=True),
            (torch.rand(11, generator=g, dtype=torch.float64) + 0.5).requires_grad_(),
            torch.tensor(0.8, dtype=torch.float64, requires_grad=True),
            torch.tensor(1.3, dtype=torch.float64, requires_grad=True)]
    assert torch.autograd.gradcheck(lambda *a: hopscotch_ext.scaled_add_rms_norm(*a, EPS), args)


def test_gradcheck_rms_norm_and_silu_and_mul():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 13, generator=g, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(13, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: hopscotch_ext.rms_norm(a, b, EPS), [x, w])
    gu = torch.randn(2, 3, 2 * 9, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(hopscotch_ext.silu_and_mul, [gu])


def test_scalar_gradients_in_float32_match_reference_autograd():
    """The training path Hopscotch uses: float32 activations, gradients for b and s."""
    g = torch.Generator().manual_seed(2)
    x, res = torch.randn(2, 9, 576, generator=g), torch.randn(2, 9, 576, generator=g)
    w = torch.rand(576, generator=g) + 0.5
    grads = []
    for fn in (hopscotch_ext.scaled_add_rms_norm, R.scaled_add_rms_norm_ref):
        b = torch.tensor(0.9, requires_grad=True)
        s = torch.tensor(1.1, requires_grad=True)
        xr = x.clone().requires_grad_()
        normed, new_res = fn(xr, res, w, b, s, EPS)
        (normed.square().mean() + new_res.mean()).backward()
        grads.append((b.grad, s.grad, xr.grad))
    for a, c in zip(*grads):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-6)


# ---- opcheck and torch.compile --------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_every_op(device):
    """Every op, whichever implementation is registered (the fallback runs it too: test_ops_registration.py)."""
    needs_cuda_kernels(device)
    for op, args in opcheck_cases(device):
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph_block():
    """A decoder-block-shaped function of the ops compiles without graph breaks and matches eager."""
    hidden, inter, heads, hs = 64, 96, 4, 16
    g = torch.Generator().manual_seed(3)
    w_in, w_post = torch.rand(hidden, generator=g) + 0.5, torch.rand(hidden, generator=g) + 0.5
    w_qk = torch.randn(2 * heads * hs, hidden, generator=g) * 0.1
    w_gu = torch.randn(2 * inter, hidden, generator=g) * 0.1
    w_down = torch.randn(hidden, inter, generator=g) * 0.1
    cache = torch.randn(64, hs, generator=g)
    b, s = torch.tensor(0.9), torch.tensor(1.1)

    def block(x, residual, pos):
        normed, residual = hopscotch_ext.scaled_add_rms_norm(x, residual, w_in, b, s, EPS)
        qk = torch.nn.functional.linear(normed, w_qk).view(*x.shape[:-1], 2 * heads, hs)
        q, k = qk[..., :heads, :].clone(), qk[..., heads:, :].clone()
        hopscotch_ext.rotary_embedding(pos, q, k, cache)
        attn_like = (q + k).flatten(-2)
        normed2 = hopscotch_ext.rms_norm(attn_like + residual, w_post, EPS)
        return torch.nn.functional.linear(hopscotch_ext.silu_and_mul(torch.nn.functional.linear(normed2, w_gu)),
                                          w_down), residual

    x, res = torch.randn(2, 5, hidden, generator=g), torch.randn(2, 5, hidden, generator=g)
    pos = torch.arange(5).repeat(2, 1)
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True)
    for a, c in zip(compiled(x, res, pos), block(x, res, pos)):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)


# ---- errors that name the argument, what it was and what was expected ------------------------------------


def _bad_input_cases():
    x, res, w = torch.randn(4, 8), torch.randn(4, 8), torch.rand(8)
    b = torch.tensor(1.0)
    cache = torch.randn(16, 8)
    return [
        (lambda: hopscotch_ext.rms_norm(x, torch.rand(9), EPS), r"weight has shape \[9\]; expected \[8\]"),
        (lambda: hopscotch_ext.rms_norm(x.long(), w.long(), EPS), r"x has dtype Long; expected float32"),
        (lambda: hopscotch_ext.rms_norm(x, w.double(), EPS), r"weight has dtype Double but x has dtype Float"),
        (lambda: hopscotch_ext.scaled_add_rms_norm(x, res[:3], w, b, b, EPS), r"residual has shape \[3, 8\]"),
        (lambda: hopscotch_ext.scaled_add_rms_norm(x, res, w, torch.ones(2), b, EPS),
         r"b has shape \[2\]; expected a 0-d tensor"),
        (lambda: hopscotch_ext.scaled_add_rms_norm(x, res.half(), w, b, b, EPS), r"residual has dtype Half"),
        (lambda: hopscotch_ext.silu_and_mul(torch.randn(3, 7)), r"gate_up has shape \[3, 7\]; expected an even"),
        (lambda: hopscotch_ext.rotary_embedding(torch.arange(4), torch.randn(4, 2, 8), None, cache[:, :5]),
         r"rot_dim 5; expected an even number"),
        (lambda: hopscotch_ext.rotary_embedding(torch.arange(3), torch.randn(4, 2, 8), None, cache),
         r"expected query to be \[\*positions.shape, num_heads, head_size\]"),
        (lambda: hopscotch_ext.rotary_embedding(torch.arange(4).float(), torch.randn(4, 2, 8), None, cache),
         r"positions has dtype Float; expected int64 or int32"),
        (lambda: hopscotch_ext.rotary_embedding(torch.arange(4), torch.randn(4, 2, 8), torch.randn(4, 2, 6), cache),
         r"key has shape \[4, 2, 6\]"),
        (lambda: hopscotch_ext.rotary_embedding_out(torch.arange(3), torch.randn(4, 2, 8), cache),
         r"rotary_embedding_out: x has shape \[4, 2, 8\] and positions \[3\]; expected x to be"),
        (lambda: hopscotch_ext.silu_gate_up(x, torch.randn(6, 9)),
         r"gate_up_weight has shape \[6, 9\]; expected \[2 \* intermediate, 8\]"),
        (lambda: hopscotch_ext.silu_gate_up(x, torch.randn(7, 8)), r"gate_up_weight has shape \[7, 8\]"),
        (lambda: hopscotch_ext.silu_gate_up(x, torch.randn(6, 8), torch.randn(5)),
         r"gate_up_bias has shape \[5\]; expected \[6\]"),
        (lambda: hopscotch_ext.silu_gate_up(x, torch.randn(6, 8).half()),
         r"gate_up_weight has dtype Half but x has dtype Float"),
    ]


@needs_extension
@pytest.mark.parametrize("case", range(len(_bad_input_cases())))
def test_bad_inputs_raise_clear_errors(case):
    fn, pattern = _bad_input_cases()[case]
    with pytest.raises(RuntimeError, match=pattern):
        fn()


@needs_extension
def test_rotary_position_out_of_range_on_cpu():
    with pytest.raises(RuntimeError, match=r"positions holds 16; expected 0 <= position < 16"):
        hopscotch_ext.rotary_embedding(torch.tensor([3, 16]), torch.randn(2, 1, 8), None, torch.randn(16, 8))


@needs_extension
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cpu_tensor_with_cuda_tensor_is_refused():
    x = torch.randn(4, 8, device="cuda")
    with pytest.raises(RuntimeError, match=r"weight is on cpu but x is on cuda"):
        hopscotch_ext.rms_norm(x, torch.rand(8), EPS)


# ---- build info and the fallback -------------------------------------------------------------------------


def test_info_reports_build():
    info = hopscotch_ext.info()
    for key in ("loaded", "load_error", "torch_version_built", "backends", "cuda_archs", "torch_version_runtime"):
        assert key in info
    if info["loaded"]:
        assert info["torch_version_built"] == torch.__version__
        assert "cpu" in info["backends"]
        if "cuda" in info["backends"]:
            assert info["cuda_archs"], "a CUDA build must report its archs"
        assert isinstance(hopscotch_ext._C.cuda_device_count(), int)


def test_import_without_extension_warns_once_and_falls_back():
    """Simulate a missing _C: the package imports, warns once with a rebuild hint, and the references serve."""
    code = textwrap.dedent("""
        import sys, warnings, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "hopscotch_ext._C":
                    raise ImportError("simulated: not built")
        sys.meta_path.insert(0, Block())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import torch, hopscotch_ext
            import hopscotch_ext.ops
        msgs = [str(w.message) for w in caught if "hopscotch_ext._C" in str(w.message)]
        assert len(msgs) == 1, msgs
        assert "pip install --no-build-isolation -e ." in msgs[0], msgs[0]
        assert not hopscotch_ext.info()["loaded"] and hopscotch_ext.info()["backends"] == []
        x = torch.randn(3, 8); w = torch.rand(8)
        out = hopscotch_ext.rms_norm(x, w, 1e-6)
        assert torch.allclose(out, hopscotch_ext.reference.rms_norm_ref(x, w, 1e-6))
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout
