"""HopscotchCache: the KV cache a patched model owns (docs/ARCHITECTURE.md §2.2, §2.9).

One pair of preallocated, contiguous buffers ``[batch, kv_heads, capacity, head_dim]`` per *kept* attention block; a
skipped block allocates nothing, and a sliding-window block only about two windows (``sliding.py``; not with
``window_buffers=False``, which a compiled step needs). The rotated keys and the values of a forward are written
straight into their slots by one kernel (``hopscotch_ext.rotary_embedding_kv_cache``), and attention reads a view of
the filled part: no op copies the filled part of the cache at a decode step. Capacity grows by doubling (one copy,
amortised over the steps that fill it), never past ``max_capacity``; ``generate()`` sizes it for its own
``max_length`` up front, so a generation never grows it. Nothing is reserved for the model's
``max_position_embeddings``.

The filled length is kept twice: a Python int (the eager forward slices with it) and a 0-d device tensor (a forward
traced by ``torch.compile`` reads and advances only the tensor, so the length can change from step to step without
a recompilation or a host sync; see ``StackRun``). ``get_seq_length`` re-reads the tensor after a compiled step.

A batch with left padding is recorded once, at its first forward (one host sync, at prefill): its padding mask is
kept beside the buffers, ``[batch, capacity]``, and attention gets a mask only then. A batch that was unpadded stays
so: a later forward whose ``attention_mask`` marks a new token as padding is refused (checked on the device, no
sync), never silently ignored.

It subclasses transformers' ``Cache`` so that ``generate()`` (beam search included: ``reorder_cache``) and code that
checks ``isinstance(cache, Cache)`` accept it, but it overrides every method generate calls; an unpatched model
cannot write to it (``update`` refuses).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from ..errors import HopscotchError
from ..hf_compat import init_cache_base
from .sliding import fit_window, static_address as _static

__all__ = ["CacheCapacityError", "CacheMismatchError", "HopscotchCache", "KVBlock", "kv_cache_bytes"]

_GRANULE = 256  # default first allocation: the first forward's tokens rounded up to this


class CacheMismatchError(HopscotchError, ValueError):
    """A cache that was filled under another skip set (or by the unpatched model) cannot be reused."""


class CacheCapacityError(HopscotchError, ValueError):
    """A forward needs more tokens than the cache may hold (``max_capacity``) or its batch / dtype changed."""


def _check_size(name: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"HopscotchCache({name}={value!r}): expected a positive integer or None")
    return value


class KVBlock:
    """The keys and values of one kept attention block (``layer_idx`` in the original model)."""

    is_compileable = False
    is_croppable = True

    def __init__(self, owner: "HopscotchCache", layer_idx: int, kv_heads: int, head_dim: int,
                 sliding_window: int | None, dtype: torch.dtype, device: torch.device):
        self._owner = owner
        self.layer_idx = layer_idx
        self.kv_heads = kv_heads
        self.head_dim = head_dim
        self.sliding_window = sliding_window
        self.dtype = dtype
        self.device = device
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None
        self.compact = False  # window-sized buffers (sliding.py), holding positions offset.. at slots 0..
        self.offset = 0

    @property
    def is_sliding(self) -> bool:
        return self.sliding_window is not None

    def spec(self) -> tuple:
        return (self.layer_idx, self.kv_heads, self.head_dim, self.sliding_window, self.dtype, self.device)

    @property
    def is_initialized(self) -> bool:
        return self.key_buffer is not None

    @property
    def keys(self) -> torch.Tensor | None:
        """The filled part of the key buffer, ``[batch, kv_heads, length, head_dim]`` (a view; a window-sized
        block's from position ``offset``)."""
        return None if self.key_buffer is None else self.key_buffer[:, :, :self._owner.get_seq_length() - self.offset]

    @property
    def values(self) -> torch.Tensor | None:
        length = self._owner.get_seq_length() - self.offset
        return None if self.value_buffer is None else self.value_buffer[:, :, :length]

    def get_seq_length(self) -> int:
        return self._owner.get_seq_length()

    def get_max_length(self) -> int:
        return -1 if self._owner.max_capacity is None else self._owner.max_capacity

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._owner.get_seq_length() + query_length, 0

    def allocated_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.key_buffer, self.value_buffer) if t is not None)

    def __repr__(self) -> str:
        shape = None if self.key_buffer is None else list(self.key_buffer.shape)
        window = f", sliding window {self.sliding_window}" if self.sliding_window else ""
        return f"KVBlock(attention block {self.layer_idx}, buffers {shape}{window})"


class HopscotchCache(Cache):
    """The compact, preallocated KV cache of a hopscotch-patched model.

    ``capacity``: tokens to allocate at the first write (default: that forward's tokens rounded up to 256, or
    ``generate()``'s ``max_length``); ``max_capacity``: the most tokens it may ever hold (default: no limit).
    Make one and pass it as the cache to ``generate()`` or to the model's forward, or let the patched model make
    its own (``generate()``, or a forward with ``use_cache=True``).
    """

    is_compileable = False  # generate() must not build 4-D masks or compile for it: the patched forward does that

    def __init__(self, capacity: int | None = None, max_capacity: int | None = None, window_buffers: bool = True):
        init_cache_base(self)  # transformers' Cache fields, whatever the installed release calls them (hf_compat)
        self.initial_capacity = _check_size("capacity", capacity)
        self.max_capacity = _check_size("max_capacity", max_capacity)
        if capacity is not None and max_capacity is not None and capacity > max_capacity:
            raise ValueError(f"HopscotchCache(capacity={capacity}, max_capacity={max_capacity}): capacity must not "
                             "exceed max_capacity")
        if not isinstance(window_buffers, bool):
            raise ValueError(f"HopscotchCache(window_buffers={window_buffers!r}): expected True or False")
        self.window_buffers = window_buffers
        self.layers: list[KVBlock] = []
        self.kept: tuple[int, ...] | None = None
        self.capacity = 0
        self._batch = 0
        self.padded = False
        self.pad_mask: torch.Tensor | None = None  # [batch, capacity] bool, only for a padded batch
        self._length = 0
        self._length_t: torch.Tensor | None = None  # 0-d int64 on the buffers' device
        self._host_valid = True

    # ---- layout -------------------------------------------------------------------------------------------

    def bind(self, kept: tuple[int, ...], blocks) -> None:
        """Lay the cache out for a plan's kept attention blocks. ``blocks()`` gives (layer_idx, kv_heads, head_dim,
        sliding_window, dtype, device) per kept block, in order (``PatchState.cache_blocks``); it is called only
        when a sequence starts (a decode step compares the kept blocks alone). A cache that holds tokens keeps its
        layout or is refused."""
        if self.kept == kept and self.get_seq_length() > 0:
            return
        if self.get_seq_length() > 0:
            raise CacheMismatchError(
                f"the cache holds tokens written while attention blocks {list(self.kept)} were kept; the current "
                f"plan keeps {list(kept)}. Start a new cache after changing the plan.")
        specs = list(blocks())
        if self.kept == kept and [b.spec() for b in self.layers] == specs:
            return
        self.layers = [KVBlock(self, *spec) for spec in specs]
        for block in self.layers:
            block.compact = self.window_buffers and block.is_sliding
        self.kept = kept
        self.capacity = 0
        self._batch = 0
        self.pad_mask = None
        self._length_t = None

    def check_layout(self, kept: tuple[int, ...]) -> None:
        """For a compiled step: the cache must already be laid out for these kept blocks and allocated (with no kept
        block, every attention skipped, there is nothing to allocate)."""
        if any(block.compact for block in self.layers):
            raise CacheMismatchError("a compiled step attends over the whole capacity, which window-sized buffers do "
                                     "not hold: make the cache with HopscotchCache(capacity=..., window_buffers=False)")
        if self.kept != kept or (kept and not self.capacity):
            raise CacheMismatchError(
                f"a compiled step needs a HopscotchCache already laid out and allocated for the kept attention blocks "
                f"{list(kept)} (run the prefill eagerly first); this one holds {self.kept} with capacity "
                f"{self.capacity}")

    def _allocate(self, batch: int, capacity: int) -> None:
        """(Re)allocate every buffer at ``capacity``, keeping the filled part (a growth copies it once)."""
        keep = self._length if self.capacity else 0
        with torch.inference_mode(False), torch.no_grad():  # ordinary tensors: writable in any mode
            for block in self.layers:
                if block.compact:  # sized per forward (sliding.fit_window)
                    if not keep:
                        block.key_buffer = block.value_buffer = None
                    continue
                shape = (batch, block.kv_heads, capacity, block.head_dim)
                for name in ("key_buffer", "value_buffer"):
                    # zeros, not empty: a compiled step attends over the whole capacity (masked), and 0 * NaN of
                    # uninitialised memory would poison it
                    new = torch.zeros(shape, dtype=block.dtype, device=block.device)
                    if keep:
                        new[:, :, :keep].copy_(getattr(block, name)[:, :, :keep])
                    setattr(block, name, _static(new))
            device = self.layers[0].device
            if self.pad_mask is not None:
                pad = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
                if keep:
                    pad[:, :keep].copy_(self.pad_mask[:, :keep])
                self.pad_mask = _static(pad)
            if self._length_t is None or self._length_t.device != device:
                self._length_t = _static(torch.tensor(self._length, dtype=torch.long, device=device))
        self.capacity = capacity
        self._batch = batch

    def reserve(self, batch: int, new_tokens: int, padding: torch.Tensor | None = None) -> int:
        """Make room for ``new_tokens`` more tokens of a ``batch``-row forward; ``padding`` is the forward's 2-D
        attention mask, if any. Returns the filled length before the forward (the first slot it writes)."""
        start = self.get_seq_length()
        needed = start + new_tokens
        if self.max_capacity is not None and needed > self.max_capacity:
            raise CacheCapacityError(f"this forward needs {needed} cached tokens ({start} held + {new_tokens} new) "
                                     f"but the cache holds at most max_capacity={self.max_capacity}")
        allocated = self.capacity > 0
        same = allocated and self._batch == batch
        if start > 0 and not same:
            raise CacheCapacityError(f"the cache holds a batch of {self._batch} sequences; this forward has "
                                     f"{batch}. Start a new cache (or call reset()) for another batch.")
        if start == 0:
            # Once per sequence, at its first forward: the only host sync this cache makes.
            self.padded = padding is not None and not bool(padding.all())
            if not self.padded:
                self.pad_mask = None
            if not same:
                self.capacity = 0
                cap = max(self.initial_capacity or -(-needed // _GRANULE) * _GRANULE, needed)
                self._allocate(batch, cap if self.max_capacity is None else min(cap, self.max_capacity))
            if self.padded and self.pad_mask is None:
                # An ordinary tensor, as the buffers are (_allocate): a compiled step writes it outside inference mode.
                with torch.inference_mode(False), torch.no_grad():
                    self.pad_mask = _static(torch.zeros(batch, self.capacity, dtype=torch.bool,
                                                        device=self.layers[0].device))
        if needed > self.capacity:
            cap = max(2 * self.capacity, needed)
            self._allocate(batch, cap if self.max_capacity is None else min(cap, self.max_capacity))
        for block in self.layers:
            if block.compact:
                fit_window(block, start, new_tokens, batch, self.capacity)
        return start

    # ---- length ------------------------------------------------------------------------------------------

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens held (the same for every kept block)."""
        if not self._host_valid:  # a compiled step advanced the device copy only
            self._length = int(self._length_t)
            self._host_valid = True
        return self._length

    def length_tensor(self) -> torch.Tensor:
        """The filled length as a 0-d int64 tensor on the buffers' device (what a compiled step reads and advances;
        allocated with the buffers)."""
        return self._length_t

    def advance(self, tokens: int) -> None:
        """After an eager forward wrote ``tokens`` tokens into every block."""
        self._length += tokens
        self._length_t.fill_(self._length)

    def advance_traced(self, tokens: int) -> None:
        """After a compiled forward: the device length only (the host copy is re-read when next needed)."""
        self._length_t.add_(tokens)
        self._host_valid = False

    # ---- what transformers' Cache interface asks ---------------------------------------------------------

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        raise TypeError("a HopscotchCache is written only by a hopscotch-patched model (the model this cache was "
                        "given to is not patched, or was unpatched); use a transformers DynamicCache with an "
                        "unpatched model")

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        return (f"HopscotchCache({len(self.layers)} kept attention blocks, {self.get_seq_length()} of "
                f"{self.capacity} tokens, batch {self._batch})")

    @property
    def is_linear(self) -> list[bool]:
        return [False] * max(len(self.layers), 1)

    @property
    def is_sliding(self) -> list[bool]:
        return [b.is_sliding for b in self.layers] or [False]

    @property
    def is_dummy(self) -> list[bool]:
        return [False] * len(self.layers)

    @property
    def is_croppable(self) -> bool:
        return True

    @property
    def batch_size(self) -> int:
        return self._batch

    @property
    def max_batch_size(self) -> int:
        return self._batch

    @property
    def max_cache_len(self) -> int:
        return self.capacity

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1 if self.max_capacity is None else self.max_capacity

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def reset(self) -> None:
        """Forget every token (the buffers are kept for the next sequence)."""
        self._length = 0
        self._host_valid = True
        if self._length_t is not None:
            self._length_t.zero_()
        for block in self.layers:
            block.offset = 0

    def crop(self, max_length: int) -> None:
        """Keep the first ``max_length`` tokens (a negative value removes that many from the end)."""
        n = self.get_seq_length()
        keep = max(n + max_length if max_length < 0 else min(n, max_length), 0)
        lost = [b.layer_idx for b in self.layers if b.compact and b.offset > max(0, keep - b.sliding_window + 1)]
        if lost:
            raise CacheCapacityError(f"cannot crop to {keep} tokens: the window-sized buffers of sliding blocks {lost} "
                                     "no longer hold the keys before it (use HopscotchCache(window_buffers=False))")
        self._length = keep
        if self._length_t is not None:
            self._length_t.fill_(self._length)

    def _rebuild(self, index_fn) -> None:
        with torch.inference_mode(False), torch.no_grad():
            for block in self.layers:
                if block.key_buffer is not None:
                    block.key_buffer = index_fn(block.key_buffer)
                    block.value_buffer = index_fn(block.value_buffer)
            if self.pad_mask is not None:
                self.pad_mask = index_fn(self.pad_mask)
        if self.layers and self.layers[0].key_buffer is not None:
            self._batch = self.layers[0].key_buffer.shape[0]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: row i becomes row ``beam_idx[i]``."""
        self._rebuild(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._rebuild(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._rebuild(lambda t: t[indices.to(t.device) if isinstance(indices, torch.Tensor) else indices])

    def offload(self, *args, **kwargs):
        raise NotImplementedError("HopscotchCache does not offload to the CPU")

    prefetch = offload

    def allocated_bytes(self) -> int:
        """Bytes the key and value buffers hold (the allocation, capacity included)."""
        return sum(block.allocated_bytes() for block in self.layers)




def kv_cache_bytes(cache) -> int:
    """Bytes the keys and values of a cache hold: a HopscotchCache's allocation (capacity included), or what every
    layer of a transformers cache holds."""
    if isinstance(cache, HopscotchCache):
        return cache.allocated_bytes()
    return sum(t.numel() * t.element_size() for layer in getattr(cache, "layers", [])
               for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if isinstance(t, torch.Tensor))
