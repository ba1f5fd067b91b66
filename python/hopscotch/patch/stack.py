"""The patched decoder stack: the forward that replaces ``LlamaModel.forward`` (and its Qwen2 / Mistral / Qwen3
twins) on a patched model instance.

The residual stream is threaded through the layers vLLM-style. Each block returns its output ("delta") and the
stack keeps it pending; the next RMSNorm that reads the residual stream -- the next kept block's input norm, or the
model's final norm -- applies it and normalises in one ``scaled_add_rms_norm``:

    residual = s * residual + b * delta;   x = rms_norm(residual) * weight

A skipped block contributes nothing and changes nothing: the pending delta simply waits for the next norm.
"""

from __future__ import annotations

import contextlib

import torch

import hopscotch_ext

from transformers.cache_utils import DynamicCache

from ..arch import norm_params
from ..hf_compat import check_forward_kwargs, model_output, pop_cache
from .cache_step import CacheStep
from .hf_cache import TransformersCacheStep, compact_cache
from .hopscotch_cache import HopscotchCache
from .offload import onloaded
from .rope import RopeContext
from .steps import UncachedStep

__all__ = ["Stream", "StackRun", "patched_forward"]


class Stream:
    """The residual stream and the block output waiting to be added to it."""

    def __init__(self, hidden: torch.Tensor):
        self.residual = hidden
        self.pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def clone(self) -> "Stream":
        """An independent copy (inference writes the residual and the pending output in place)."""
        other = Stream(self.residual.clone())
        if self.pending is not None:
            delta, b, s = self.pending
            other.pending = (delta.clone(), b, s)
        return other

    def norm(self, norm_module) -> torch.Tensor:
        """Apply the pending block output and return the normalised stream (on ``norm_module``'s device)."""
        w, eps = norm_params(norm_module)
        if self.residual.device != w.device:  # model dispatched across devices
            self.residual = self.residual.to(w.device)
        if self.pending is None:
            return hopscotch_ext.rms_norm(self.residual, w, eps)
        delta, b, s = self.pending
        if delta.device != w.device:  # model dispatched across devices (no .to() dispatched otherwise)
            delta, b, s = delta.to(w.device), b.to(w.device), s.to(w.device)
        self.pending = None
        # In place at inference (the delta's buffer becomes the normed output), differentiable when training.
        x, self.residual = hopscotch_ext.add_rms_norm(delta, self.residual, w, b, s, eps)
        return x


class StackRun:
    """What every layer of one forward shares: the step (``steps.py``: the cache, or none, and its masks) and the
    rotary table."""

    def __init__(self, base, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                 inputs_embeds=None, use_cache=False):
        state = base._hopscotch_state
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        traced = torch.compiler.is_compiling()
        if not traced:  # a compiled step runs on the fusion its (eager) prefill checked
            state.ensure_fused()
        hidden = base.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds.clone()
        bsz, seq = hidden.shape[:2]
        device = hidden.device
        self.layers = state.layers
        if use_cache and cache is None:
            # The model's own cache serves inference; a forward that records gradients (the scalars are always
            # trainable parameters) gets a transformers cache, as the unpatched model would.
            # Under torch.compile only a cache allocated beforehand can be written (pass one in).
            own = not traced and not torch.is_grad_enabled()
            cache = HopscotchCache() if own else DynamicCache(config=base.config)
        self.cache = cache
        kept = state.kept_attention()
        rope = RopeContext(base.rotary_emb, bsz, seq, device)
        if isinstance(cache, HopscotchCache):
            if torch.is_grad_enabled() and not traced:
                raise ValueError("a HopscotchCache serves inference only: run the forward under torch.no_grad() or "
                                 "torch.inference_mode(), or pass a transformers DynamicCache (or use_cache=False) "
                                 "when gradients are needed")
            if traced:  # laid out and allocated by an eager forward; reading its host length would recompile
                cache.check_layout(kept)
            else:
                cache.bind(kept, state.cache_blocks)
            # With no attention kept nothing writes the cache (and it holds no block to size a step on).
            self.step = CacheStep(cache, rope, bsz, seq, attention_mask, traced) if kept else None
        elif cache is not None:  # a transformers cache (DynamicCache, StaticCache ...): adapted at the edge
            compact_cache(cache, kept, len(state.layers))  # the caller's own object
            self.step = TransformersCacheStep(cache, rope, seq, attention_mask, device)
        else:
            self.step = UncachedStep(rope, seq, attention_mask, device)
        if position_ids is None:
            position_ids = self.step.positions() if self.step is not None else torch.arange(seq, device=device)[None]
        if kept:
            rope.build(position_ids.to(device))
        self.hidden = hidden
        self.final_norm = base.norm
        self.offloaded = state.offloaded

    def run(self, stream: Stream, start: int = 0) -> torch.Tensor:
        """Layers ``start``.. of the stack, then the final norm: the last hidden state."""
        for layer in self.layers[start:]:
            layer(stream, self)
        if self.step is not None:
            self.step.finish()
        if self.offloaded:  # accelerate offloaded the final norm's weight: loaded for this read (offload.py)
            with onloaded([self.final_norm]):
                return stream.norm(self.final_norm)
        return stream.norm(self.final_norm)


def patched_forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                    use_cache=None, return_dict=None, **kwargs):
    """Forward of a patched decoder stack; same arguments and output as the HF model it replaces.

    The cache arrives under the installed transformers' name (``cache`` or ``past_key_values``: see hf_compat);
    any other keyword argument this forward would not honour is refused, never dropped.
    """
    cache = pop_cache(kwargs)
    check_forward_kwargs(kwargs)
    if use_cache is None:
        use_cache = getattr(self.config, "use_cache", False)
    # Inference (no gradient) runs under inference_mode: the custom ops' autograd kernels are then not even
    # dispatched. A traced forward is left as the caller traces it.
    inference = not torch.is_grad_enabled() and not torch.compiler.is_compiling()
    with torch.inference_mode() if inference else contextlib.nullcontext():
        run = StackRun(self, input_ids, attention_mask, position_ids, cache, inputs_embeds, use_cache)
        hidden = run.run(Stream(run.hidden))
    out = model_output(hidden, run.cache if use_cache else None)
    return out if return_dict is not False else out.to_tuple()
