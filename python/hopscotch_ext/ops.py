"""The hopscotch_ext ops: their schemas, typed Python wrappers, and the registration that picks the implementation.

Every op is always present in ``torch.ops.hopscotch_ext`` under the schema in ``SCHEMAS``:

- compiled extension loaded: ``_C`` defined the schemas (csrc/torch_bindings.cpp) and the CPU / CUDA kernels;
- otherwise (not built, built against another torch, or ``HOPSCOTCH_DISABLE_EXTENSION=1``): this module defines
  the same schemas with ``torch.library`` and registers the pure-torch references of ``reference.py`` as the
  implementation (every device). ``reference_calls()`` counts their calls by op name.

In both cases the same fake kernels (``torch.compile``) and autograd formulas (``_autograd.py``) are registered,
so callers never branch on which implementation is there. ``SCHEMAS`` is the one Python copy of the schemas; a
test compares it with the compiled ones whenever ``_C`` is loaded.
"""

from __future__ import annotations

import collections
from typing import Callable

import torch

from . import _autograd as A
from . import _checks
from . import reference as ref

__all__ = [
    "SCHEMAS",
    "reference_calls",
    "rms_norm",
    "scaled_add_rms_norm",
    "scaled_add_rms_norm_",
    "silu_and_mul",
    "silu_gate_up",
    "rotary_embedding",
    "rotary_embedding_out",
    "rotary_embedding_kv_cache",
]

_LIB = "hopscotch_ext"

# name -> schema, exactly as csrc/torch_bindings.cpp defines it (tests/test_ops_api.py checks).
SCHEMAS: dict[str, str] = {
    "rms_norm": "rms_norm(Tensor x, Tensor weight, float eps) -> Tensor",
    "scaled_add_rms_norm": ("scaled_add_rms_norm(Tensor x, Tensor residual, Tensor weight, Tensor b, Tensor s, "
                            "float eps) -> (Tensor, Tensor)"),
    "scaled_add_rms_norm_": ("scaled_add_rms_norm_(Tensor(a!) x, Tensor(b!) residual, Tensor weight, Tensor b, "
                             "Tensor s, float eps) -> ()"),
    "silu_and_mul": "silu_and_mul(Tensor gate_up) -> Tensor",
    "silu_gate_up": "silu_gate_up(Tensor x, Tensor gate_up_weight, Tensor? gate_up_bias=None) -> Tensor",
    "rotary_embedding": ("rotary_embedding(Tensor positions, Tensor(a!) query, Tensor(b!)? key, "
                         "Tensor cos_sin_cache) -> ()"),
    "rotary_embedding_out": ("rotary_embedding_out(Tensor positions, Tensor x, Tensor cos_sin_cache, "
                             "bool inverse=False) -> Tensor"),
    "rotary_embedding_kv_cache": ("rotary_embedding_kv_cache(Tensor positions, Tensor(a!) query, Tensor key, "
                                  "Tensor value, Tensor cos_sin_cache, Tensor(b!) key_cache, Tensor(c!) value_cache, "
                                  "Tensor slots) -> ()"),
}

# The pure-torch implementation of each op when the compiled one is absent.
_REFERENCES: dict[str, Callable] = {
    "rms_norm": ref.rms_norm_ref,
    "scaled_add_rms_norm": ref.scaled_add_rms_norm_ref,
    "scaled_add_rms_norm_": ref.scaled_add_rms_norm_inplace_ref,
    "silu_and_mul": ref.silu_and_mul_ref,
    "silu_gate_up": ref.silu_gate_up_ref,
    "rotary_embedding": ref.rotary_embedding_ref,
    "rotary_embedding_out": ref.rotary_embedding_out_ref,
    "rotary_embedding_kv_cache": ref.rotary_embedding_kv_cache_ref,
}

_reference_calls: collections.Counter = collections.Counter()


def reference_calls() -> collections.Counter:
    """Calls of the reference implementations (the fallback registration) so far, by op name; empty while the
    compiled kernels serve every op."""
    return collections.Counter(_reference_calls)


# ---- typed wrappers ----------------------------------------------------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension: ``x / sqrt(mean(x**2) + eps) * weight``."""
    return torch.ops.hopscotch_ext.rms_norm(x, weight, eps)


def scaled_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, b: torch.Tensor,
                        s: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``new_residual = s * residual + b * x``; returns ``(rms_norm(new_residual) * weight, new_residual)``."""
    return torch.ops.hopscotch_ext.scaled_add_rms_norm(x, residual, weight, b, s, eps)


def scaled_add_rms_norm_(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, b: torch.Tensor,
                         s: torch.Tensor, eps: float) -> None:
    """In-place inference form: ``residual`` becomes the new residual, ``x`` the normalised output."""
    torch.ops.hopscotch_ext.scaled_add_rms_norm_(x, residual, weight, b, s, eps)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for ``gate_up = [gate | up]`` along the last dimension."""
    return torch.ops.hopscotch_ext.silu_and_mul(gate_up)


def silu_gate_up(x: torch.Tensor, gate_up_weight: torch.Tensor,
                 gate_up_bias: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(x @ W_gate^T + b_gate) * (x @ W_up^T + b_up)`` for ``gate_up_weight = [W_gate ; W_up]``."""
    return torch.ops.hopscotch_ext.silu_gate_up(x, gate_up_weight, gate_up_bias)


def _check_positions(op: str, positions: torch.Tensor, cos_sin_cache: torch.Tensor) -> None:
    """Positions in range before launch (on CUDA the kernels cannot raise; see _checks.py); a malformed argument is
    left to the op's own checks, which name it."""
    if cos_sin_cache.dim() == 2 and not positions.is_floating_point():
        _checks.check_indices(positions, cos_sin_cache.shape[0], op, "positions", "position",
                              "the rows of cos_sin_cache")


def rotary_embedding(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor | None,
                     cos_sin_cache: torch.Tensor) -> None:
    """In-place half rotation of ``query`` [*P, heads, head_size] and ``key`` at ``positions`` [*P]."""
    _check_positions("rotary_embedding", positions, cos_sin_cache)
    torch.ops.hopscotch_ext.rotary_embedding(positions, query, key, cos_sin_cache)


def rotary_embedding_out(positions: torch.Tensor, x: torch.Tensor, cos_sin_cache: torch.Tensor,
                         inverse: bool = False) -> torch.Tensor:
    """Rotated copy of ``x`` [*P, heads, head_size] (differentiable w.r.t. ``x``); ``inverse``: by -angle."""
    _check_positions("rotary_embedding_out", positions, cos_sin_cache)
    return torch.ops.hopscotch_ext.rotary_embedding_out(positions, x, cos_sin_cache, inverse)


def rotary_embedding_kv_cache(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              cos_sin_cache: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                              slots: torch.Tensor) -> None:
    """The decode step's cache write: ``query`` [B, T, Hq, D] rotated in place; the rotated ``key`` and the ``value``
    [B, T, Hkv, D] written into slot ``slots[t]`` of ``key_cache`` / ``value_cache`` [B, Hkv, capacity, D]."""
    _check_positions("rotary_embedding_kv_cache", positions, cos_sin_cache)
    if key_cache.dim() == 4 and not slots.is_floating_point():
        _checks.check_indices(slots, key_cache.shape[2], "rotary_embedding_kv_cache", "slots", "slot",
                              "the capacity of key_cache")
    torch.ops.hopscotch_ext.rotary_embedding_kv_cache(positions, query, key, value, cos_sin_cache, key_cache,
                                                      value_cache, slots)


# ---- registration ------------------------------------------------------------------------------------------

_libs: list[torch.library.Library] = []  # kept alive: a Library's registrations end with it


def _register_fakes() -> None:
    @torch.library.register_fake(f"{_LIB}::rms_norm")
    def _(x, weight, eps):
        return x.new_empty(x.shape)

    @torch.library.register_fake(f"{_LIB}::scaled_add_rms_norm")
    def _(x, residual, weight, b, s, eps):
        return x.new_empty(x.shape), x.new_empty(x.shape)

    @torch.library.register_fake(f"{_LIB}::scaled_add_rms_norm_")
    def _(x, residual, weight, b, s, eps):
        return None

    @torch.library.register_fake(f"{_LIB}::silu_and_mul")
    def _(gate_up):
        return gate_up.new_empty((*gate_up.shape[:-1], gate_up.shape[-1] // 2))

    @torch.library.register_fake(f"{_LIB}::silu_gate_up")
    def _(x, gate_up_weight, gate_up_bias=None):
        return x.new_empty((*x.shape[:-1], gate_up_weight.shape[0] // 2))

    @torch.library.register_fake(f"{_LIB}::rotary_embedding")
    def _(positions, query, key, cos_sin_cache):
        return None

    @torch.library.register_fake(f"{_LIB}::rotary_embedding_out")
    def _(positions, x, cos_sin_cache, inverse=False):
        return x.new_empty(x.shape)

    @torch.library.register_fake(f"{_LIB}::rotary_embedding_kv_cache")
    def _(positions, query, key, value, cos_sin_cache, key_cache, value_cache, slots):
        return None


def _inference_only(name: str, functional: str) -> Callable:
    """Autograd kernel of an in-place op: refuses inputs that need a gradient (it has no backward; the in-place
    write would hide the values autograd needs) and otherwise passes through to the implementation."""
    op = getattr(torch.ops.hopscotch_ext, name).default

    def kernel(keyset, *args):
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            raise RuntimeError(f"hopscotch_ext.{name} writes in place and has no backward; with inputs that "
                               f"require grad use {functional} (hopscotch_ext.functional picks it for you)")
        return op.redispatch(keyset & torch._C._after_autograd_keyset, *args)

    return kernel


def _register_autograd() -> None:
    for name, backward, setup in (
        ("rms_norm", A.rms_norm_backward, A.rms_norm_setup),
        ("scaled_add_rms_norm", A.scaled_add_rms_norm_backward, A.scaled_add_rms_norm_setup),
        ("silu_and_mul", A.silu_and_mul_backward, A.silu_and_mul_setup),
        ("silu_gate_up", A.silu_gate_up_backward, A.silu_gate_up_setup),
        ("rotary_embedding_out", A.rotary_out_backward, A.rotary_out_setup),
    ):
        torch.library.register_autograd(f"{_LIB}::{name}", backward, setup_context=setup)
    lib = torch.library.Library(_LIB, "IMPL")
    _libs.append(lib)
    lib.impl("scaled_add_rms_norm_", _inference_only("scaled_add_rms_norm_", "scaled_add_rms_norm"), "Autograd",
             with_keyset=True)
    lib.impl("rotary_embedding", _inference_only("rotary_embedding", "rotary_embedding_out"), "Autograd",
             with_keyset=True)
    lib.impl("rotary_embedding_kv_cache", _inference_only("rotary_embedding_kv_cache", "rotary_embedding_out"),
             "Autograd", with_keyset=True)


def _counted(name: str) -> Callable:
    fn = _REFERENCES[name]
    check_written = _checks.written_checker(name)  # what csrc/checks.h checks of the written arguments
    check_args = _checks.ARG_CHECKS.get(name)  # and of the others, where the reference would not refuse alike

    def impl(*args):
        _reference_calls[name] += 1
        if check_args is not None:
            check_args(*args)
        if check_written is not None:
            check_written(*args)
        return fn(*args)

    impl.__name__ = f"{name}_reference"
    return impl


def _defined(name: str) -> bool:
    return hasattr(torch.ops.hopscotch_ext, name)


def _register_references() -> None:
    """The fallback: the references as the implementation of every op, on every device.

    An op whose schema exists already comes from a ``_C`` that was imported but rejected (built against another
    torch): the references then override its CPU and CUDA kernels rather than define it anew.
    """
    lib = torch.library.Library(_LIB, "FRAGMENT")
    _libs.append(lib)
    for name, schema in SCHEMAS.items():
        if _defined(name):
            keys = ("CPU", "CUDA")
        else:
            lib.define(schema)
            keys = ("CompositeExplicitAutograd",)
        for key in keys:
            lib.impl(name, _counted(name), key)


def register(compiled: bool) -> None:
    """Called once by ``hopscotch_ext/__init__.py``: the references unless ``compiled``, then fakes and autograd."""
    if not compiled:
        _register_references()
    _register_fakes()
    _register_autograd()
