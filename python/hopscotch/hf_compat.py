"""Everything that depends on the installed transformers version, in one place.

transformers renames things between minor releases. 5.24 renamed the KV cache argument of the models' forwards
(and of ``create_causal_mask``, and the output field) from ``past_key_values`` to ``cache``; a patched forward that
did not know the new name silently dropped the cache and generated garbage. So:

* the cache's name is read from the installed library (the signature of ``create_causal_mask`` and the fields of
  ``BaseModelOutputWithPast``), never assumed; the code calls ``cache_kwargs`` / ``output_cache`` / ``model_output``;
* ``check_forward_kwargs`` lists every keyword argument the patched decoder stack honours, and refuses any other
  (naming it and the transformers version) instead of dropping it;
* ``FROM_PRETRAINED_KWARGS`` is what hopscotch's loaders pass to ``from_pretrained``: 5.25 made it "kernelize" a
  model by default (module forwards swapped for kernels the ``kernels`` package fetches from the Hugging Face Hub);
* the two private parts of transformers the patch leans on live here alone: ``init_cache_base`` (``Cache``'s
  constructor, for ``HopscotchCache``) and ``install_cache_factory`` (``generate()``'s private
  ``_prepare_cache_for_generation``, where it makes its cache). ``INTERNALS`` names a probe for each, and
  ``hopscotch doctor`` runs them: a transformers release that changes one fails there, by name.

The versions tested are those in pyproject.toml's range: CI runs the oldest (5.17) and the newest release.
"""

from __future__ import annotations

import functools
import inspect

import torch
import transformers

from .errors import HopscotchError

__all__ = [
    "TRANSFORMERS_VERSION",
    "CACHE_NAMES",
    "FROM_PRETRAINED_KWARGS",
    "INTERNALS",
    "UnsupportedKeywordError",
    "cache_kwarg_name",
    "cache_kwargs",
    "check_forward_kwargs",
    "init_cache_base",
    "install_cache_factory",
    "model_output",
    "output_cache",
    "pop_cache",
    "remove_cache_factory",
]

TRANSFORMERS_VERSION: str = transformers.__version__
# The cache's names, newest first: ``cache`` (5.24+), ``past_key_values`` (up to 5.23; a deprecated alias after).
CACHE_NAMES = ("cache", "past_key_values")
# What hopscotch's loaders (models.py) pass to ``from_pretrained``: transformers' own torch modules (the reference
# the patched layers are checked against), and no hub at load time. use_kernels=False is the default up to 5.24 and
# accepted by every version claimed (>= 5.17); 5.25 defaults to True.
FROM_PRETRAINED_KWARGS = {"use_kernels": False}


class UnsupportedKeywordError(HopscotchError, TypeError):
    """A keyword argument the patched model would not honour (refused rather than silently dropped)."""


def _computed_once(fn):
    """``functools.lru_cache`` for a function of no arguments, in plain Python: torch.compile ignores an lru_cache
    wrapper, traces the ``inspect`` calls inside and warns; it traces this one as a list lookup."""
    value = []

    @functools.wraps(fn)
    def once():
        if not value:
            value.append(fn())
        return value[0]

    return once


@_computed_once
def cache_kwarg_name() -> str:
    """The name under which the installed transformers passes a KV cache to a model's forward."""
    from transformers.masking_utils import create_causal_mask

    params = inspect.signature(inspect.unwrap(create_causal_mask)).parameters
    for name in CACHE_NAMES:
        if name in params:
            return name
    raise RuntimeError(f"transformers {TRANSFORMERS_VERSION}: create_causal_mask takes none of {CACHE_NAMES} "
                       f"(its parameters: {list(params)}); this transformers version is not supported by hopscotch")


def cache_kwargs(cache) -> dict:
    """``{name: cache}`` for a model call or a mask helper, under the installed version's name."""
    return {cache_kwarg_name(): cache}


@_computed_once
def _output_cache_field() -> str:
    from transformers.modeling_outputs import BaseModelOutputWithPast

    fields = BaseModelOutputWithPast.__dataclass_fields__
    for name in CACHE_NAMES:
        if name in fields:
            return name
    raise RuntimeError(f"transformers {TRANSFORMERS_VERSION}: BaseModelOutputWithPast has none of {CACHE_NAMES}")


def model_output(last_hidden_state: torch.Tensor, cache):
    """A ``BaseModelOutputWithPast`` with the cache under the installed version's field name."""
    from transformers.modeling_outputs import BaseModelOutputWithPast

    return BaseModelOutputWithPast(last_hidden_state=last_hidden_state, **{_output_cache_field(): cache})


def output_cache(output):
    """The cache a model output or a ``generate(return_dict_in_generate=True)`` result carries (or None)."""
    for name in CACHE_NAMES:
        value = output.get(name) if hasattr(output, "get") else getattr(output, name, None)
        if value is not None:
            return value
    return None


def pop_cache(kwargs: dict):
    """Remove and return the cache from a forward's keyword arguments, under either name (not both)."""
    given = [name for name in CACHE_NAMES if kwargs.get(name) is not None]
    if len(given) > 1:
        raise UnsupportedKeywordError(f"both {given[0]}= and {given[1]}= were passed; pass the cache once "
                                      f"({cache_kwarg_name()}= on transformers {TRANSFORMERS_VERSION})")
    cache = kwargs.pop(given[0]) if given else None
    for name in CACHE_NAMES:
        kwargs.pop(name, None)
    return cache


# Keyword arguments transformers may pass down to a decoder stack's forward (TransformersKwargs and friends), and
# the values the patched stack honours. Anything else, or another value, is refused.
def _off(value) -> bool:
    return value is None or value is False


_HONOURED = {
    # what it is -> is the given value something the patched stack does (or that needs nothing from it)?
    "output_attentions": _off,            # per-layer outputs are never materialised
    "output_hidden_states": _off,
    "output_router_logits": _off,         # MoE only
    "is_causal": lambda v: v is None or v is True,      # decoder-only: always causal
    "num_items_in_batch": lambda v: True,  # loss normalisation, used by the LM head's loss, not the stack
    "cu_seq_lens_q": lambda v: v is None,  # packed (varlen flash-attention) batches are not supported
    "cu_seq_lens_k": lambda v: v is None,
    "max_length_q": lambda v: v is None,
    "max_length_k": lambda v: v is None,
    "seq_idx": lambda v: v is None,
}
_WHY = {
    "output_attentions": "a hopscotch-patched model does not return per-layer attentions",
    "output_hidden_states": "a hopscotch-patched model does not return per-layer hidden states (the residual "
                            "stream is never materialised per layer)",
    "is_causal": "the patched model is causal only",
}


def check_forward_kwargs(kwargs: dict) -> None:
    """Refuse every keyword argument (or value) the patched decoder stack would not honour."""
    for name, value in kwargs.items():
        ok = _HONOURED.get(name)
        if ok is None:
            raise UnsupportedKeywordError(
                f"the hopscotch-patched model got the keyword argument {name}= (transformers {TRANSFORMERS_VERSION}), "
                f"which it does not know how to honour; refusing it rather than ignoring it. If this transformers "
                f"version passes it on its own, it is newer than hopscotch supports (see `hopscotch doctor`); "
                f"unpatch_model() runs the model unpatched")
        if not ok(value):
            why = _WHY.get(name, f"{name}={value!r} is not supported by the patched model")
            raise UnsupportedKeywordError(f"{name}={value!r} (transformers {TRANSFORMERS_VERSION}): {why}; "
                                          "unpatch_model() first")


# ---- transformers' Cache base class and generate()'s cache: the private parts, probed by `hopscotch doctor` -------

def init_cache_base(cache) -> None:
    """Run transformers' ``Cache.__init__`` on ``cache`` (a subclass that overrides every method ``generate()``
    calls: ``HopscotchCache``), with no layers: the fields its other methods read are set as the release sets them."""
    from transformers.cache_utils import Cache

    try:
        Cache.__init__(cache, layers=[])
    except TypeError as exc:
        raise RuntimeError(f"transformers {TRANSFORMERS_VERSION}: Cache.__init__(layers=[]) failed ({exc}); this "
                           "transformers version is not supported by hopscotch (see `hopscotch doctor`)") from exc


_FACTORY = "_prepare_cache_for_generation"  # GenerationMixin's private method that makes generate()'s cache
_FACTORY_PARAMS = ("generation_config", "model_kwargs")  # its first parameters, by name
_MARK = "_hopscotch_cache_factory"


def _factory_signature(method) -> inspect.Signature:
    sig = inspect.signature(method)
    names = list(sig.parameters)
    if tuple(names[:len(_FACTORY_PARAMS)]) != _FACTORY_PARAMS or "max_cache_length" not in names:
        raise RuntimeError(f"transformers {TRANSFORMERS_VERSION}: generate()'s {_FACTORY} takes {names}; hopscotch "
                           f"expects {list(_FACTORY_PARAMS)} first and max_cache_length (see `hopscotch doctor`)")
    return sig


def install_cache_factory(lm, make_cache) -> None:
    """Where ``generate()`` on ``lm`` would make a plain ``DynamicCache`` for itself (no cache passed, no
    ``cache_implementation`` asked for), it gets ``make_cache(max_length)`` instead. A cache the caller passes, and
    every ``cache_implementation``, are left as they are. Idempotent; ``remove_cache_factory`` undoes it."""
    from transformers.cache_utils import DynamicCache

    original = getattr(lm, _FACTORY, None)
    if original is None or getattr(original, _MARK, False):
        return
    sig = _factory_signature(original)

    @functools.wraps(original)
    def prepare(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        generation_config, model_kwargs = bound.arguments["generation_config"], bound.arguments["model_kwargs"]
        name = cache_kwarg_name()
        given = model_kwargs.get(name) is not None
        result = original(*args, **kwargs)
        made = model_kwargs.get(name)
        if not given and getattr(generation_config, "cache_implementation", None) is None \
                and type(made) is DynamicCache:
            max_length = bound.arguments.get("max_cache_length") or getattr(generation_config, "max_length", None)
            model_kwargs[name] = make_cache(max_length if isinstance(max_length, int) and max_length > 0 else None)
        return result

    setattr(prepare, _MARK, True)
    lm.__dict__[_FACTORY] = prepare


def remove_cache_factory(lm) -> None:
    hook = lm.__dict__.get(_FACTORY)
    if hook is not None and getattr(hook, _MARK, False):
        del lm.__dict__[_FACTORY]


def _probe_cache_base() -> str:
    from transformers.cache_utils import Cache

    class Probe(Cache):
        def __init__(self):
            init_cache_base(self)

    probe = Probe()
    missing = [f for f in ("layers", "offloading") if not hasattr(probe, f)]
    if missing or probe.layers != []:
        raise RuntimeError(f"Cache.__init__(layers=[]) left {missing or 'layers'} unset")
    return "Cache.__init__(layers=[]) sets the fields generate() reads"


def _probe_cache_factory() -> str:
    from transformers.generation.utils import GenerationMixin

    method = getattr(GenerationMixin, _FACTORY, None)
    if method is None:
        raise RuntimeError(f"GenerationMixin has no {_FACTORY}: generate() makes its cache elsewhere")
    _factory_signature(method.__get__(object()))
    return f"GenerationMixin.{_FACTORY}({', '.join(_FACTORY_PARAMS)}, ..., max_cache_length)"


def _probe_cache_name() -> str:
    return f"create_causal_mask and BaseModelOutputWithPast take {cache_kwarg_name()}= / .{_output_cache_field()}"


# What hopscotch reads of transformers beyond its documented API, each with a probe that raises when a release
# changes it (`hopscotch doctor`).
INTERNALS = {
    "the cache's argument name": _probe_cache_name,
    "Cache base fields": _probe_cache_base,
    "generate()'s cache factory": _probe_cache_factory,
}
