"""search(): choose the blocks to skip, by Hopscotch (faithful or fast) or a baseline; returns a SkipPlan.

Methods (``SearchConfig.method``):
  ``hopscotch``       the paper's greedy search (every candidate trained), then the final scalars
  ``hopscotch-fast``  the same decision rule on a screened, budgeted shortlist (``strategies.py``), then the final
                      scalars
  ``llm-drop``        LLM-Drop cosine-similarity drop; ``target`` attn | mlp | block | joint, one-shot or iterative
  ``shortgpt``        ShortGPT block influence (whole layers: attention and MLP), one-shot
  ``random``          seeded random attention blocks (a floor for the others)
The model is left patched with the returned plan applied.

Every setting lives in ``SearchConfig`` (``config.py``: defaults, checks, help). LLM-Drop and ShortGPT score on
``similarity_batches`` when given (packed plain text, as their papers score C4: ``TaskData.text_calibration``),
else on the calibration batches. Every method's provenance records its work in token-passes (``train.py``
defines the unit) next to its wall time, and the config it ran with.
"""

from __future__ import annotations

import os
import time

from torch import nn

from ..errors import ArgumentError, check_arg
from ..limits import check_num_skip
from ..patch import apply_plan
from ..plan import PlanError, SkipPlan, architecture_fingerprint
from . import distributed
from .baselines import select_random
from .config import GREEDY_METHODS, METHODS, SIMILARITY_METHODS, ConfigError, FastConfig, SearchConfig
from .guards import ScalarGuard
from .methods import run_hopscotch, run_similarity
from .objectives import OBJECTIVES
from .state import StateMismatchError, data_digest
from .train import batch_tokens

__all__ = ["search", "SearchConfig", "FastConfig", "ScalarGuard", "ConfigError", "StateMismatchError", "METHODS",
           "OBJECTIVES"]


def search(model: nn.Module, batches: list[dict], config: SearchConfig | None = None, *,
           similarity_batches: list[dict] | None = None, generic_batches: list[dict] | None = None,
           state_path: str | os.PathLike | None = None, data_info: dict | None = None, progress: bool = True,
           **settings) -> SkipPlan:
    """Search ``config.num_skip`` blocks to skip on calibration ``batches`` (dicts of input_ids, attention_mask,
    labels; labels -100 where no loss is taken) with ``config`` (default ``SearchConfig()``; keyword ``settings``
    change single settings by name, e.g. ``search(model, batches, method="hopscotch", margin=0.02)``).

    ``state_path`` makes the search resumable: a killed search started again with the same config and data
    continues from its last finished step. Under torchrun (a default process group of several ranks, e.g. from
    ``distributed.init_from_env``) every rank calls ``search`` on the same model; the greedy methods' candidates
    are spread over the ranks, rank 0 alone writes the state, and every rank returns the same plan.
    ``generic_batches`` (packed plain text, e.g. ``prepare_task(...).text_calibration``) are needed by the greedy
    methods' final training when ``config.guard.generic_weight`` > 0, as by default (``ScalarGuard()``;
    ``generic_weight=0`` or ``guard=ScalarGuard.paper()`` is the paper's training on ``batches`` alone);
    ``data_info`` goes into the plan's provenance."""
    _check_inputs(model, batches, similarity_batches, generic_batches, state_path, progress)
    config = _config(config, settings)
    n_layers = model.config.num_hidden_layers
    check_num_skip(config.num_skip, n_layers, config.skip_kind)
    greedy = config.method in GREEDY_METHODS
    if greedy and config.guard.generic_weight and not generic_batches:
        raise ArgumentError(
            f"search: generic_weight={config.guard.generic_weight:g} (the final scalars' training mixes in generic "
            f"text{', the default' if config.guard == ScalarGuard() else ''}) needs generic_batches=: packed plain "
            "text, e.g. prepare_task(...).text_calibration; or pass generic_weight=0 for the paper's training on the "
            "task's batches alone")
    ranks = distributed.current()  # a torchrun's ranks share the candidates (distributed.py); rank 0's data
    if ranks.world > 1:
        batches, similarity_batches, generic_batches = distributed.same_inputs(ranks, batches, similarity_batches,
                                                                              generic_batches)
        progress = progress and ranks.main
    sim_batches = similarity_batches or batches
    inputs = {"model": architecture_fingerprint(model)["config_hash"], "data": data_digest(batches)}
    if config.method in SIMILARITY_METHODS:
        inputs["similarity_data"] = data_digest(sim_batches)
    if greedy and config.guard.generic_weight:
        inputs["generic_data"] = data_digest(generic_batches)
    state = distributed.open_state(ranks, state_path, config, inputs)
    t0 = time.perf_counter()
    prov = {"method": config.method, "objective": config.objective, "seed": config.seed, "num_skip": config.num_skip,
            "data": data_info or {}, "data_digest": inputs["data"],
            "calibration_tokens": sum(batch_tokens(b) for b in batches)}
    if config.method in SIMILARITY_METHODS:
        attn, mlp, more = run_similarity(model, sim_batches, config, state, separate=bool(similarity_batches),
                                         progress=progress)
        plan = SkipPlan.for_model(model, attn, mlp, **prov, **more, hyperparameters=config.as_dict())
    elif config.method == "random":
        attn = select_random(n_layers, config.num_skip, config.seed)
        plan = SkipPlan.for_model(model, attn, **prov, hyperparameters=config.as_dict())
    else:
        chosen, scalars, more = run_hopscotch(model, batches, config, state, generic=generic_batches,
                                              progress=progress, ranks=ranks)
        plan = SkipPlan.for_model(model, chosen, (), scalars, **prov, **more, hyperparameters=config.as_dict())
    # This call's wall time (search_seconds, for hopscotch: the recorded work of the steps this plan used,
    # including steps an interrupted or a longer run recorded).
    plan.provenance["wall_seconds"] = round(time.perf_counter() - t0, 2)
    apply_plan(model, plan)
    return plan


def _config(config: SearchConfig | None, settings: dict) -> SearchConfig:
    """``config`` with the keyword ``settings`` applied; a bad one is named as search()'s argument."""
    check_arg(config is None or isinstance(config, SearchConfig), "search", "config", config,
              "a SearchConfig or None")
    try:
        return (config or SearchConfig()).replace(**settings)
    except ConfigError as exc:
        raise exc.owned_by("search") from None


def _check_inputs(model, batches, similarity_batches, generic_batches, state_path, progress) -> None:
    """search()'s arguments other than the settings, each refused by name."""
    check_arg(isinstance(model, nn.Module) and hasattr(model, "config"), "search", "model", model,
              "a loaded transformers causal LM")
    exported = getattr(model, "hopscotch_export", None)  # hopscotch.models marks a model loaded from an export
    if exported is not None:
        raise PlanError(f"search: the model is a {exported.describe()} ({exported.path}); search the original model")
    for name, value in (("batches", batches), ("similarity_batches", similarity_batches),
                        ("generic_batches", generic_batches)):
        if name != "batches" and value is None:
            continue
        check_arg(isinstance(value, (list, tuple)) and all(isinstance(b, dict) for b in value), "search", name,
                  value, "a list of dicts of tensors (input_ids, attention_mask, labels)")
    if not batches:
        raise ArgumentError("search: batches=[] holds no calibration batches")
    for i, b in enumerate(batches):
        if not {"input_ids", "attention_mask", "labels"} <= set(b):
            raise ArgumentError(f"search: calibration batch {i} has keys {sorted(b)}; expected input_ids, "
                                "attention_mask, labels")
    check_arg(isinstance(progress, bool), "search", "progress", progress, "True or False")
    check_arg(state_path is None or isinstance(state_path, (str, os.PathLike)), "search", "state_path", state_path,
              "None or a path")
