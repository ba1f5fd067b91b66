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

from ..hf_compat import cache_kwargs, check_forward_kwargs, model_output, pop_cache
from transformers.cache_utils import DynamicCache

from .cache_step import CacheStep
from .hopscotch_cache import HopscotchCache
from .kv_cache import compact_cache
from .offload import onloaded
from .rope import RopeContext

__all__ = ["Stream", "StackRun", "patched_forward"]


class _SdpaConfig:
    """The model config as the mask helpers should see it: masks in SDPA's format (bool, or None = causal)."""

    _attn_implementation = "sdpa"

    def __init__(self, config):
        self.__dict__["_config"] = config

    def __getattr__(self, name):
        return getattr(self.__dict__["_config"], name)


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
        w, eps = norm_module.weight, norm_module.variance_epsilon
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


def _masks(base, state, hidden, attention_mask, cache, position_ids) -> dict:
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    if isinstance(attention_mask, dict):  # already prepared per layer type
        return attention_mask
    kwargs = dict(config=_SdpaConfig(base.config), inputs_embeds=hidden, attention_mask=attention_mask,
                  position_ids=position_ids, **cache_kwargs(cache))
    masks = {}
    for t in state.kept_attention_types():
        masks[t] = create_sliding_window_causal_mask(**kwargs) if t == "sliding_attention" \
            else create_causal_mask(**kwargs)
    return masks


class StackRun:
    """What every layer of one forward shares: the cache (and, for a HopscotchCache, this forward's ``CacheStep``),
    the masks per attention type and the rotary table."""

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
        self.layers = state.layers
        self.cache = None
        self.step: CacheStep | None = None
        if use_cache and cache is None:
            # The model's own cache serves inference; a forward that records gradients (the scalars are always
            # trainable parameters) gets a transformers cache, as the unpatched model would.
            # Under torch.compile only a cache allocated beforehand can be written (pass one in).
            own = not traced and not torch.is_grad_enabled()
            cache = HopscotchCache() if own else DynamicCache(config=base.config)
        if isinstance(cache, HopscotchCache):
            if torch.is_grad_enabled() and not traced:
                raise ValueError("a HopscotchCache serves inference only: run the forward under torch.no_grad() or "
                                 "torch.inference_mode(), or pass a transformers DynamicCache (or use_cache=False) "
                                 "when gradients are needed")
            if traced:  # laid out and allocated by an eager forward; reading its host length would recompile
                cache.check_layout(state.kept_attention())
            else:
                cache.bind(state.kept_attention(), state.cache_blocks)
            self.cache = cache
            if cache.layers:  # some attention is kept: it writes the cache
                self.step = CacheStep(cache, bsz, seq, attention_mask, traced)
        elif cache is not None:  # a transformers cache (DynamicCache, StaticCache ...): compacted, its own masks
            self.cache = compact_cache(cache, state.kept_attention(), len(state.layers))  # the caller's own object
        if position_ids is None:
            if self.step is not None:
                position_ids = self.step.positions()
            else:
                past = self.cache.get_seq_length() if self.cache is not None else 0
                position_ids = (torch.arange(seq, device=hidden.device) + past).unsqueeze(0)
        position_ids = position_ids.to(hidden.device)
        self.masks = {} if self.step is not None else _masks(base, state, hidden, attention_mask, self.cache,
                                                             position_ids)
        kept = bool(state.kept_attention())
        self.rope = RopeContext(base.rotary_emb, position_ids, bsz, seq, hidden.device) if kept else None
        self.hidden = hidden
        self.final_norm = base.norm
        self.offloaded = state.offloaded

    def mask(self, attention_type: str, device: torch.device):
        """The attention mask for layers of ``attention_type`` (None: plain causal), on ``device``."""
        mask = self.masks[attention_type]
        return mask.to(device) if mask is not None and mask.device != device else mask

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
