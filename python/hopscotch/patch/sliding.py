"""Window-sized buffers for the sliding-window blocks of a HopscotchCache (docs/ARCHITECTURE.md §2.2, §2.9).

A query of a sliding-window block attends to its own key and the ``window - 1`` before it, so a forward of ``T``
tokens starting at position ``start`` needs the keys of positions ``start - window + 1 .. start + T - 1``: the
block's buffers hold ``max(2 * window, window - 1 + T)`` tokens (never more than the cache's capacity), starting
at position ``block.offset``. When a forward would write past the end, the last ``window - 1`` keys and values move
to the front (one copy of ``window - 1`` tokens every ``window`` or more decode steps: amortised, less than one
token per step) and ``offset`` follows; a longer forward reallocates. Eager forwards only: a compiled step attends
over the whole capacity under a mask built in the graph, so a cache meant for one keeps full-size buffers
(``HopscotchCache(window_buffers=False)``).
"""

from __future__ import annotations

import torch

__all__ = ["fit_window", "static_address", "window_size"]


def static_address(t: torch.Tensor) -> torch.Tensor:
    """A buffer a compiled (CUDA-graph) step writes in place keeps its address: tell the compiler not to copy it."""
    torch._dynamo.mark_static_address(t)
    return t


def window_size(window: int, tokens: int, limit: int) -> int:
    """Tokens a sliding block's buffers hold for a forward of ``tokens`` tokens, at most ``limit`` (the capacity)."""
    return min(limit, max(2 * window, window - 1 + tokens))


def _new(block, batch: int, size: int, keep: slice | None, kept: int) -> None:
    shape = (batch, block.kv_heads, size, block.head_dim)
    for name in ("key_buffer", "value_buffer"):
        new = torch.zeros(shape, dtype=block.dtype, device=block.device)
        if kept:
            new[:, :, :kept].copy_(getattr(block, name)[:, :, keep])
        setattr(block, name, static_address(new))


def fit_window(block, start: int, tokens: int, batch: int, limit: int) -> None:
    """Make ``block``'s buffers ready for a forward of ``tokens`` tokens from position ``start`` (``limit``: the
    cache's capacity, which holds them)."""
    window = block.sliding_window
    buf = block.key_buffer
    with torch.inference_mode(False), torch.no_grad():  # ordinary tensors, as the cache's other buffers
        if buf is None or buf.shape[0] != batch or start == 0:
            if buf is None or buf.shape[0] != batch or buf.shape[2] < min(limit, window - 1 + tokens):
                _new(block, batch, window_size(window, tokens, limit), None, 0)
            block.offset = 0
            return
        if start + tokens - block.offset <= buf.shape[2]:
            return
        offset = max(0, start - (window - 1))  # the first position a query of this forward reads
        kept = start - offset
        src = slice(offset - block.offset, start - block.offset)
        if kept + tokens > buf.shape[2]:
            _new(block, batch, window_size(window, tokens, limit), src, kept)
        else:
            for name in ("key_buffer", "value_buffer"):
                t = getattr(block, name)
                t[:, :, :kept].copy_(t[:, :, src].clone())
        block.offset = offset
