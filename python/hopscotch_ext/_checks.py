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

The messages are the C++ ones, word for word: tests match them whichever implementation serves the op.
"""

from __future__ import annotations

import torch

__all__ = ["check_indices", "check_written", "written_checker"]


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
