"""The argument checks every implementation applies alike, on the Python side.

* Index values: ``positions`` (rows of ``cos_sin_cache``) and ``slots`` (of the KV cache) must lie in
  ``[0, limit)``. The CPU kernels check them on the host (csrc/ops.h); the reference checks them itself (its
  indexing would wrap -1 to the last row); the CUDA kernels cannot without a stream sync, so the Python wrappers
  of ``hopscotch_ext.ops`` call ``check_indices`` before launch: one min / max reduction and one device-to-host
  copy of two numbers per index tensor, i.e. one sync per call. Skipped while tracing (``torch.compile``: the
  values do not exist yet) and during CUDA graph capture (a sync is not allowed there); the CUDA kernels then
  assert on the device and never read or write out of bounds. docs/ARCHITECTURE.md §2.10.
* Written arguments (``Tensor(a!)`` in the schema): no element stored twice, no memory shared with another
  argument. The compiled ops check in C++ (csrc/checks.h, ``check_written_args``); ``check_written`` is the same
  rule, with the same messages, for the reference fallback (``ops._register_references``).
* The rotary ops' shapes, dtypes and devices (``ARG_CHECKS``): csrc/checks.h's checks, which the reference's
  torch indexing would otherwise answer with a broadcasting error or a silent result; the fallback runs them
  before the reference, so that every implementation refuses alike.

The messages are the C++ ones, word for word: tests match them whichever implementation serves the op.
"""

from __future__ import annotations

import torch

__all__ = ["ARG_CHECKS", "check_indices", "check_rotary_args", "check_rotary_kv_cache_args", "check_written",
           "written_checker"]


def _tracing() -> bool:
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def check_indices(idx: torch.Tensor, limit: int, op: str, name: str, noun: str, what: str) -> None:
    """Every value of ``idx`` in ``[0, limit)``, else a RuntimeError naming the smallest value when one is
    negative, the largest otherwise (as csrc/checks.h ``check_index_range`` does)."""
    if idx.numel() == 0 or idx.is_meta or _tracing() or isinstance(idx, torch._subclasses.FakeTensor):
        return
    lo, hi = torch.stack(torch.aminmax(idx.reshape(-1).long())).tolist()  # one device-to-host copy
    if lo < 0 or hi >= limit:
        raise RuntimeError(f"{op}: {name} holds {lo if lo < 0 else hi}; expected 0 <= {noun} < {limit} ({what})")


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _dense(t: torch.Tensor) -> bool:
    return torch._debug_has_internal_overlap(t) == 0  # ATen's MemOverlap::No: non-overlapping and dense


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """at::get_overlap_status(a, b) is Full or Partial: the same tensor, or two dense tensors whose byte ranges in
    one storage meet. Strided views (e.g. q and k sliced from one fused qkv buffer) are "too hard": False."""
    if a is b:
        return True
    if a.numel() == 0 or b.numel() == 0 or not (_dense(a) and _dense(b)):
        return False
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr() or a.device != b.device:
        return False
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 < b0 + b.numel() * b.element_size() and b0 < a0 + a.numel() * a.element_size()


def check_written(op: str, written: list[tuple[str, torch.Tensor | None]],
                  read: list[tuple[str, torch.Tensor | None]]) -> None:
    """csrc/checks.h ``check_written_args``: each written tensor has no internal overlap and shares no memory with
    any other argument."""
    for i, (name, t) in enumerate(written):
        if t is None:
            continue
        if torch._debug_has_internal_overlap(t) == 1:
            raise RuntimeError(
                f"{op}: {name} has shape {_shape(t)} and strides {list(t.stride())}; the op writes it, so expected no "
                "element stored twice (a stride-0 dimension, e.g. from expand(), would be written twice); pass a "
                "tensor of its own (.clone())")
        for other, o in written[i + 1:] + read:
            if o is not None and _overlaps(t, o):
                raise RuntimeError(f"{op}: {name} and {other} share memory; the op writes {name}, so expected them "
                                   f"not to overlap (pass tensors of their own, e.g. .clone())")


def written_checker(op_name: str):
    """A function of the op's arguments that runs ``check_written`` on them, the written ones found from the
    schema's alias annotations (``Tensor(a!)``); None for an op that writes none of its arguments."""
    schema = getattr(torch.ops.hopscotch_ext, op_name).default._schema
    names = [(a.name, a.alias_info is not None and a.alias_info.is_write) for a in schema.arguments]
    if not any(w for _, w in names):
        return None

    def check(*args) -> None:
        pairs = [(n, w, v) for (n, w), v in zip(names, args) if v is None or isinstance(v, torch.Tensor)]
        check_written(op_name, [(n, v) for n, w, v in pairs if w], [(n, v) for n, w, v in pairs if not w])

    return check


# ---- the rotary ops' argument checks, for the reference fallback (csrc/checks.h, the same messages) ---------------

_TYPE_NAMES = {torch.float32: "Float", torch.float16: "Half", torch.bfloat16: "BFloat16", torch.float64: "Double",
               torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte",
               torch.bool: "Bool"}
_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _t(dtype: torch.dtype) -> str:
    return _TYPE_NAMES.get(dtype, str(dtype))


def _require(ok: bool, op: str, *parts) -> None:
    if not ok:
        raise RuntimeError(f"{op}: " + "".join(str(p) for p in parts))


def _same(op: str, ref: torch.Tensor, t: torch.Tensor, ref_name: str, name: str, dtype: bool = True) -> None:
    _require(t.device == ref.device, op, f"{name} is on {t.device} but {ref_name} is on {ref.device}; expected both "
             "on the same device")
    if dtype:
        _require(t.dtype == ref.dtype, op, f"{name} has dtype {_t(t.dtype)} but {ref_name} has dtype "
                 f"{_t(ref.dtype)}; expected the same dtype")


def _leading(op: str, positions: torch.Tensor, t: torch.Tensor, name: str, heads: str) -> None:
    ok = t.dim() == positions.dim() + 2 and tuple(t.shape[:positions.dim()]) == tuple(positions.shape)
    _require(ok, op, f"{name} has shape {_shape(t)} and positions {_shape(positions)}; expected {name} to be "
             f"[*positions.shape, {heads}, head_size]")


def check_rotary_args(op: str, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor | None,
                      cos_sin_cache: torch.Tensor, name: str = "query", unit_stride: bool = True) -> None:
    """csrc/checks.h ``check_rotary_inputs``."""
    _require(query.dtype in _FLOATS, op, f"{name} has dtype {_t(query.dtype)}; expected float32, float16 or bfloat16")
    _require(positions.dtype in (torch.int64, torch.int32), op,
             f"positions has dtype {_t(positions.dtype)}; expected int64 or int32")
    _same(op, query, positions, name, "positions", dtype=False)
    _same(op, query, cos_sin_cache, name, "cos_sin_cache", dtype=False)
    _leading(op, positions, query, name, "num_heads")
    head_size = query.shape[-1]
    _require(cos_sin_cache.dim() == 2, op, f"cos_sin_cache has shape {_shape(cos_sin_cache)}; expected "
             "[max_position, rot_dim]")
    rot_dim = cos_sin_cache.shape[1]
    _require(rot_dim % 2 == 0 and 0 < rot_dim <= head_size, op, f"cos_sin_cache has rot_dim {rot_dim}; expected an "
             f"even number between 2 and head_size ({head_size})")
    _require(cos_sin_cache.dtype in (torch.float32, query.dtype), op, f"cos_sin_cache has dtype "
             f"{_t(cos_sin_cache.dtype)}; expected float32 or {name}'s dtype ({_t(query.dtype)})")
    _require(not unit_stride or query.stride(-1) == 1, op, f"{name}'s last dimension has stride {query.stride(-1)}; "
             "expected 1 (head features contiguous)")
    if key is not None:
        _same(op, query, key, name, "key")
        _require(key.dim() == query.dim() and key.shape[-1] == head_size, op, f"key has shape {_shape(key)}; expected "
                 f"[*positions.shape, num_kv_heads, {head_size}]")
        _leading(op, positions, key, "key", "num_kv_heads")
        _require(not unit_stride or key.stride(-1) == 1, op, f"key's last dimension has stride {key.stride(-1)}; "
                 "expected 1 (head features contiguous)")


def check_rotary_kv_cache_args(positions, query, key, value, cos_sin_cache, key_cache, value_cache, slots) -> None:
    """csrc/checks.h ``check_rotary_kv_cache_inputs``."""
    op = "rotary_embedding_kv_cache"
    _require(positions.dim() == 2, op, f"positions has shape {_shape(positions)}; expected [batch, tokens]")
    check_rotary_args(op, positions, query, key, cos_sin_cache)
    _same(op, query, value, "query", "value")
    _require(value.shape == key.shape and value.stride(-1) == 1, op, f"value has shape {_shape(value)} and strides "
             f"{list(value.stride())}; expected key's shape {_shape(key)} with unit-stride features")
    for name, c in (("key_cache", key_cache), ("value_cache", value_cache)):
        _same(op, query, c, "query", name)
        ok = c.dim() == 4 and (c.shape[0], c.shape[1], c.shape[3]) == (key.shape[0], key.shape[2], key.shape[3])
        _require(ok and c.stride(3) == 1, op, f"{name} has shape {_shape(c)} and strides {list(c.stride())}; expected "
                 f"[{key.shape[0]}, {key.shape[2]}, capacity, {key.shape[3]}] with unit-stride features")
    _require(value_cache.shape == key_cache.shape, op, f"value_cache has shape {_shape(value_cache)} but key_cache has "
             f"shape {_shape(key_cache)}; expected the same shape")
    _require(slots.dtype in (torch.int64, torch.int32), op,
             f"slots has dtype {_t(slots.dtype)}; expected int64 or int32")
    _same(op, query, slots, "query", "slots", dtype=False)
    _require(slots.dim() == 1 and slots.shape[0] == positions.shape[1], op, f"slots has shape {_shape(slots)}; "
             f"expected [{positions.shape[1]}] (one cache slot per token)")


# The fallback runs these before the reference (ops._register_references), as the compiled ops run csrc/checks.h.
ARG_CHECKS = {
    "rotary_embedding": lambda pos, q, k, cache: check_rotary_args("rotary_embedding", pos, q, k, cache),
    "rotary_embedding_out": lambda pos, x, cache, inverse=False: check_rotary_args(
        "rotary_embedding_out", pos, x, None, cache, name="x", unit_stride=False),
    "rotary_embedding_kv_cache": check_rotary_kv_cache_args,
}
