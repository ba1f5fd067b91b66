"""The skip-aware decoder layer: Hopscotch's four scalars and the attention / MLP blocks on the fused ops.

    h1  = b_att * Attn(Norm(h))  + s_att * h        (h1 = h exactly when the attention block is skipped)
    out = b_mlp * MLP(Norm(h1))  + s_mlp * h1       (out = h1 exactly when the MLP block is skipped)

A family with sandwich norms (Gemma 3) has a norm after each block too; it belongs to the block, whose output is
then ``PostNorm(Attn(PreNorm(h)))`` (``arch.NormLayout``; docs/ARCHITECTURE.md §2.8).

A layer does not add its own residuals: its ``forward`` leaves each block's output (the "delta") pending on the
residual stream (``stack.Stream``), and the *next* RMSNorm that reads the stream applies it and normalises in one
``add_rms_norm``, across the layer boundary (the last one with the model's final norm). Which kernel runs
(compiled or reference, in place or differentiable) is hopscotch_ext's choice, never this module's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import hopscotch_ext

from ..arch import NormLayout, norm_params
from ..plan import SCALAR_NAMES
from .fuse import FusedLinear, can_fuse

__all__ = ["HopscotchDecoderLayer", "SCALAR_NAMES", "FreedBlock"]


class FreedBlock(nn.Module):
    """Stands in for a skipped block's module (or its norm) whose weights were released
    (``apply_plan(..., free_skipped=True)``, or never loaded: ``hopscotch.from_pretrained``)."""

    def __init__(self, kind: str, layer_idx: int):
        super().__init__()
        self.kind = kind
        self.layer_idx = layer_idx

    def forward(self, *args, **kwargs):
        raise RuntimeError(f"{self.kind} block {self.layer_idx} was freed (skipped, weights released); "
                           "reload the model to run it again")

    def extra_repr(self) -> str:
        return f"{self.kind} block {self.layer_idx}, weights freed"


class HopscotchDecoderLayer(nn.Module):
    """Replaces one HF decoder layer; shares (not copies) its attention, MLP and norm modules."""

    _hopscotch_layer = True

    def __init__(self, original: nn.Module, layer_idx: int, attention_type: str, sliding_window: int | None,
                 fuse_silu: bool, norms: NormLayout = NormLayout()):
        super().__init__()
        self.norms = norms
        self.layer_idx = layer_idx
        self.attention_type = attention_type
        self.sliding_window = sliding_window  # keys a query attends to in a sliding-window block; None: all
        self.self_attn = original.self_attn
        self.mlp = original.mlp
        for name in norms.attention_norms() + norms.mlp_norms():  # under their own names: state-dict keys unchanged
            setattr(self, name, getattr(original, name))
        device = next((p.device for p in original.parameters() if p.device.type != "meta"), torch.device("cpu"))
        for name in SCALAR_NAMES:  # float32 whatever the model dtype: they are trained
            setattr(self, name, nn.Parameter(torch.ones((), dtype=torch.float32, device=device)))
        self.attn_skipped = False
        self.mlp_skipped = False
        self.attn_freed = False
        self.mlp_freed = False
        self.cache_index: int | None = layer_idx
        self._fuse_silu = fuse_silu
        # Kept outside the module tree: unpatch_model puts it back; fused projections own no parameters.
        self.__dict__["_original"] = original
        self.__dict__["_qkv"] = None
        self.__dict__["_gate_up"] = None
        self.fuse_projections()

    # ---- fused projections ---------------------------------------------------------------------------

    def fuse_projections(self) -> None:
        """(Re)build the q|k|v and gate|up concatenations where the projections allow it."""
        if not self.attn_freed:
            attn = self.self_attn
            mods = [attn.q_proj, attn.k_proj, attn.v_proj]
            self.__dict__["_qkv"] = FusedLinear(mods) if can_fuse(mods) else None
        if not self.mlp_freed:
            mods = [self.mlp.gate_proj, self.mlp.up_proj]
            self.__dict__["_gate_up"] = FusedLinear(mods) if self._fuse_silu and can_fuse(mods) else None

    def fusion_broken(self) -> bool:
        """True when something rebound a fused weight (e.g. ``model.to``) and the fusion must be rebuilt."""
        return any(f is not None and not f.intact() for f in (self._qkv, self._gate_up))

    def unfuse_projections(self) -> None:
        for f in (self._qkv, self._gate_up):
            if f is not None and f.intact():
                f.unfuse()
        self.__dict__["_qkv"] = None
        self.__dict__["_gate_up"] = None

    def free_attention(self) -> None:
        """Release the weights of this (skipped) attention block and of its norms."""
        self.__dict__["_qkv"] = None
        for name in ("self_attn",) + self.norms.attention_norms():
            setattr(self, name, FreedBlock("attention", self.layer_idx))
            setattr(self._original, name, getattr(self, name))
        self.attn_freed = True

    def free_mlp(self) -> None:
        """Release the weights of this (skipped) MLP block and of its norms."""
        self.__dict__["_gate_up"] = None
        for name in ("mlp",) + self.norms.mlp_norms():
            setattr(self, name, FreedBlock("mlp", self.layer_idx))
            setattr(self._original, name, getattr(self, name))
        self.mlp_freed = True

    # ---- the layer ---------------------------------------------------------------------------------------

    def forward(self, stream, run) -> None:
        """Advance the residual ``stream`` (``stack.Stream``) through this layer's kept blocks; ``run`` is the
        forward's shared ``stack.StackRun`` (cache, masks, rotary table). A skipped block does nothing at all."""
        norms = self.norms
        if not self.attn_skipped:
            x = stream.norm(getattr(self, norms.attn_pre))
            stream.pending = (self._post_norm(self.attention(x, run), norms.attn_post), self.attn_scale,
                              self.attn_residual_scale)
        if not self.mlp_skipped:
            x = stream.norm(getattr(self, norms.mlp_pre))
            stream.pending = (self._post_norm(self.mlp_block(x), norms.mlp_post), self.mlp_scale,
                              self.mlp_residual_scale)

    def _post_norm(self, out: torch.Tensor, name: str | None) -> torch.Tensor:
        """A block's output through its post-block norm (sandwich-norm families), else as it is."""
        if name is None:
            return out
        w, eps = norm_params(getattr(self, name))
        return hopscotch_ext.rms_norm(out, w, eps)

    # ---- blocks ----------------------------------------------------------------------------------------

    def _use_fused(self, fused: FusedLinear | None) -> bool:
        return fused is not None and not (torch.is_grad_enabled() and fused.trainable())

    def attention(self, x: torch.Tensor, run) -> torch.Tensor:
        """Attn(x) for normed input x [B, T, hidden]: the q|k|v projections, then this forward's step
        (``run.step``: ``steps.py``) rotates q and k, keeps k and v where its cache wants them and attends; o_proj."""
        attn = self.self_attn
        bsz, seq = x.shape[:2]
        hd = attn.head_dim
        if self._use_fused(self._qkv):
            q, k, v = self._qkv(x).split(self._qkv.splits, dim=-1)
        else:
            q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        q, k, v = q.view(bsz, seq, -1, hd), k.view(bsz, seq, -1, hd), v.view(bsz, seq, -1, hd)
        if hasattr(attn, "q_norm"):  # Qwen3, Gemma 3: RMSNorm over each head before the rotary
            q = hopscotch_ext.rms_norm(q, *norm_params(attn.q_norm))
            k = hopscotch_ext.rms_norm(k, *norm_params(attn.k_norm))
        out = run.step.attend(self, q, k, v)  # [B, T, Hq, D]
        return attn.o_proj(out.reshape(bsz, seq, -1))

    def mlp_block(self, x: torch.Tensor) -> torch.Tensor:
        """MLP(x) for normed input x: silu(gate) * up in one fused op over the concatenated gate|up weight where
        the projections allow it (plain nn.Linear, SiLU), else the modules one by one (the model's activation:
        Gemma's tanh GELU)."""
        mlp = self.mlp
        if self._use_fused(self._gate_up):
            h = hopscotch_ext.silu_gate_up(x, self._gate_up.weight, self._gate_up.bias)
        elif self._fuse_silu:
            g, u = mlp.gate_proj(x), mlp.up_proj(x)
            h = F.silu(g) * u
        else:
            h = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
        return mlp.down_proj(h)

    def scalars(self) -> torch.Tensor:
        """The four scalars as a float32 CPU tensor [4] (b_att, s_att, b_mlp, s_mlp)."""
        return torch.stack([getattr(self, n).detach().float().cpu() for n in SCALAR_NAMES])

    def extra_repr(self) -> str:
        vals = ", ".join(f"{n}={getattr(self, n).item():.4g}" for n in SCALAR_NAMES)
        attn = "FREED" if self.attn_freed else ("SKIPPED" if self.attn_skipped else f"kept (cache {self.cache_index})")
        fused = [n for n, f in (("qkv", self._qkv), ("gate_up", self._gate_up)) if f is not None]
        mlp = "FREED" if self.mlp_freed else ("SKIPPED" if self.mlp_skipped else "kept")
        return (f"hopscotch layer {self.layer_idx}: attention {attn}, mlp {mlp}, "
                f"{self.attention_type}, fused [{', '.join(fused) or 'none'}], {vals}")
