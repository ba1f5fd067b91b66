"""Rotary embedding for one forward pass, shared by every kept attention block.

The model's own rotary module gives cos and sin at each token's position (so every RoPE variant the model
supports, scaled or dynamic, stays exactly the model's). They are computed once per forward in float32 and laid
out as a per-token table ``[B*T, rot_dim] = [cos | sin]``; the ``rotary_embedding`` kernel then rotates q and k
in place with row index = token index (``hopscotch_ext.rotate_qk`` rotates out of place, differentiably, when
gradients are needed: Hopscotch training). A model whose rotary module takes a layer type (Gemma 3: a local base for
sliding-window layers, a global one for full-attention layers) gets one table per layer type.
"""

from __future__ import annotations

import torch

import hopscotch_ext

__all__ = ["RopeContext"]


class RopeContext:
    """Made with the forward's step (which knows the positions), built once the positions are known (``build``)."""

    def __init__(self, rotary_emb, batch: int, seq: int, device: torch.device):
        self.rotary_emb = rotary_emb
        self.batch, self.seq, self.device = batch, seq, device
        # Gemma 3: the rotary module's forward takes the layer type, one base per type
        self.layer_types = tuple(getattr(rotary_emb, "layer_types", None) or ()) or (None,)
        self._per_device: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def build(self, position_ids: torch.Tensor) -> None:
        """The table(s) for ``position_ids`` [B or 1, T]."""
        batch, seq, device = self.batch, self.seq, self.device
        probe = torch.empty(0, device=device, dtype=torch.float32)
        rows = torch.arange(batch * seq, device=device).view(batch, seq)
        self._per_device = {}
        for kind in self.layer_types:
            args = (probe, position_ids) if kind is None else (probe, position_ids, kind)
            cos, sin = self.rotary_emb(*args)  # [B or 1, T, head_dim], float32
            half = cos.shape[-1] // 2
            table = torch.cat([cos[..., :half], sin[..., :half]], dim=-1).float()
            table = table.expand(batch, seq, -1).reshape(batch * seq, -1).contiguous()
            self._per_device[(kind, device)] = (table, rows)

    def _on(self, device: torch.device, kind: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        kind = kind if kind in self.layer_types else None
        if (kind, device) not in self._per_device:  # model dispatched across devices: one copy per device
            table, rows = self._per_device[(kind, self.device)]
            self._per_device[(kind, device)] = (table.to(device), rows.to(device))
        return self._per_device[(kind, device)]

    def rotate(self, q: torch.Tensor, k: torch.Tensor, device: torch.device,
               kind: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q [B, T, Hq, D] and k [B, T, Hkv, D] (in place when no gradient is needed) with the table of
        layer type ``kind`` (a layer's ``attention_type``; ignored by a model with one table)."""
        table, rows = self._on(device, kind)
        return hopscotch_ext.rotate_qk(q, k, rows, table)

    def rotate_into_cache(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_cache: torch.Tensor,
                          value_cache: torch.Tensor, slots: torch.Tensor, kind: str | None = None) -> None:
        """Rotate q in place and write the rotated k and v into cache slots ``slots`` [T] (inference only).

        The op without its wrapper's index check (one host sync per call on CUDA): ``rows`` index this forward's
        own table and ``slots`` were reserved within the capacity (``CacheStep``), in range by construction."""
        table, rows = self._on(q.device, kind)
        torch.ops.hopscotch_ext.rotary_embedding_kv_cache(rows, q, k, v, table, key_cache, value_cache, slots)
