"""Training Hopscotch's scalars with the base weights frozen, and counting the work it takes.

Work is counted in *token-passes*. One token-pass is one token forward through the whole unpatched model: every
decoder layer (attention and MLP) and the LM head. Parts are weighed by their weight FLOPs (2 per parameter per
token: the attention score and value products, a few percent at these lengths, and the embedding lookup are not
counted), so a token that goes through only some layers, or whose position never reaches the LM head (the
search computes the head only where a loss is taken), counts that fraction of a pass, and skipped attention
blocks count nothing (they do not run). A backward counts twice its forward (the usual 2x of training FLOPs;
with the base weights frozen no weight gradients are formed, so this over-counts the backward a little, the
same way for every method). ``PassCounter.forward`` / ``backward`` hold token-passes with that weighting
applied, and ``total`` is their sum. The fast search is judged against the faithful one by these counts (and
by wall time), not by assumption.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ArgumentError, check_arg
from ..patch import is_patched, patch_model, patched_layers, reset_scalars, set_skips
from ..patch.patcher import training_context
from ..progress import Progress
from .config import SearchConfig
from .guards import GenericText
from .objectives import batch_loss, loss_positions, teacher_logprobs

__all__ = ["PassCounter", "TokenPassCost", "batch_tokens", "frozen_base", "rebatch", "scalar_parameters",
           "train_scalars", "train_schedule", "train_final_scalars", "BACKWARD_FACTOR", "FINAL_SEED_OFFSET"]

BACKWARD_FACTOR = 2.0  # a backward counts as this many forward passes of the same part
# The final scalars' data order is seeded apart from the candidates' (seed + this offset).
FINAL_SEED_OFFSET = 7919
# The rows a holdout guard keeps out of the final training are drawn with the final seed + this offset.
HOLDOUT_SEED_OFFSET = 104729


@dataclass(frozen=True)
class TokenPassCost:
    """Weights of the model's parts in token-passes: per layer its attention and MLP share, and the LM head's."""

    attn: tuple[float, ...]
    mlp: tuple[float, ...]
    head: float

    @classmethod
    def of(cls, model: nn.Module) -> "TokenPassCost":
        from ..arch import base_model

        def numel(module) -> int:
            return sum(p.numel() for p in module.parameters()) if module is not None else 0

        layers = list(base_model(model).layers)
        attn = [numel(getattr(lay, "self_attn", None)) + numel(getattr(lay, "input_layernorm", None))
                for lay in layers]
        mlp = [numel(getattr(lay, "mlp", None)) + numel(getattr(lay, "post_attention_layernorm", None))
               for lay in layers]
        head_module = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        head = head_module.weight.numel() if head_module is not None else 0
        total = float(sum(attn) + sum(mlp) + head) or 1.0
        return cls(tuple(a / total for a in attn), tuple(m / total for m in mlp), head / total)

    @property
    def num_layers(self) -> int:
        return len(self.attn)

    def layers(self, start: int = 0, skipped_attn=()) -> float:
        """Share of one token-pass of layers ``start``.. with the attention blocks ``skipped_attn`` not run."""
        skip = set(skipped_attn)
        return sum(m + (0.0 if i in skip else a)
                   for i, (a, m) in enumerate(zip(self.attn, self.mlp)) if i >= start)

    def forward(self, tokens: float, head_positions: float, start: int = 0, skipped_attn=()) -> float:
        """Token-passes of a forward of ``tokens`` tokens through layers ``start``.. and of ``head_positions``
        positions through the LM head."""
        return tokens * self.layers(start, skipped_attn) + head_positions * self.head

    def epoch(self, batches: list[dict], skipped_attn=()) -> float:
        """Token-passes of one training epoch (forward + backward) over ``batches``."""
        t = sum(batch_tokens(b) for b in batches)
        n = sum(int(loss_positions(b).sum()) for b in batches)
        return self.forward(t, n, 0, skipped_attn) * (1 + BACKWARD_FACTOR)


@dataclass
class PassCounter:
    """Work done: token-passes forward and backward, and the seconds the recorded steps took."""

    forward: float = 0.0
    backward: float = 0.0
    seconds: float = 0.0

    @property
    def total(self) -> float:
        return self.forward + self.backward

    def as_dict(self) -> dict:
        return {"forward": round(self.forward), "backward": round(self.backward), "total": round(self.total)}

    def add_record(self, rec: dict) -> None:
        """Count the work of a step recorded in the search state (done now or by an interrupted run)."""
        self.forward += rec["passes"][0]
        self.backward += rec["passes"][1]
        self.seconds += rec.get("seconds", 0.0)


def batch_tokens(batch: dict) -> int:
    """Tokens a forward over ``batch`` processes (non-padding)."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


def rebatch(batches: list[dict], batch_size: int, pad_id: int = 0) -> list[dict]:
    """The same rows (same order) in batches of ``batch_size``, each right-padded (with ``pad_id``, masked) to its
    longest row; a row's own padding is dropped first, so batches of 1 hold none. Rows must be right-padded (as
    the package's batches are). The token count (``batch_tokens``) and the loss positions are unchanged, so is the
    token-pass count."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
    rows = []
    for b in batches:
        mask = b["attention_mask"]
        for r in range(mask.shape[0]):
            n = int(mask[r].sum())
            if not bool(mask[r, :n].all()):
                raise ValueError("rebatch needs right-padded batches (attention_mask 1...1 0...0 per row)")
            rows.append({k: b[k][r, :n] for k in ("input_ids", "attention_mask", "labels")})
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(len(x["input_ids"]) for x in chunk)

        def stack(key, fill):
            return torch.stack([nn.functional.pad(x[key], (0, width - len(x[key])), value=fill) for x in chunk])

        out.append({"input_ids": stack("input_ids", pad_id), "attention_mask": stack("attention_mask", 0),
                    "labels": stack("labels", -100)})
    return out


def scalar_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every scalar of every patched layer (what Hopscotch trains)."""
    return [p for layer in patched_layers(model) for p in layer.parameters(recurse=False)]


@contextlib.contextmanager
def frozen_base(model: nn.Module):
    """Only the scalars require gradients inside; every parameter's flag is restored afterwards."""
    params = list(model.parameters())
    saved = [p.requires_grad for p in params]
    scalars = {id(p) for p in scalar_parameters(model)}
    try:
        for p in params:
            p.requires_grad_(id(p) in scalars)
        yield
    finally:
        for p, flag in zip(params, saved):
            # an accelerate-offloaded weight's meta placeholder, remade by its hook during an inference forward,
            # is an inference tensor: its flag can only be set back inside inference mode
            with torch.inference_mode() if p.is_inference() else contextlib.nullcontext():
                p.requires_grad_(flag)


def _skipped_attention(model) -> list[int]:
    return [lay.layer_idx for lay in patched_layers(model) if lay.attn_skipped]


def train_schedule(model: nn.Module, batches: list[dict], schedule: list[list[int]], *, objective: str, lr: float,
                   teacher: list | None = None, optimizer_state: dict | None = None, counter: PassCounter | None = None,
                   cost: TokenPassCost | None = None, desc: str | None = None,
                   progress: bool = False, extra_loss=None) -> tuple[list[list[float]], dict]:
    """Adam on the scalars over a fixed batch schedule (``schedule[e]`` is epoch e's order of batch indices).

    Returns per epoch ``[epoch, loss sum, loss weight]`` (loss sums token-weighted) and the optimizer state to
    continue from (``optimizer_state``: a guarded training goes on epoch by epoch). ``extra_loss(batch)``, when given,
    is called at each step with the step's batch and added to its loss before the backward (a guard's term,
    ``guards.py``); the losses returned are the task's alone.
    """
    flat = [(e, i) for e, order in enumerate(schedule) for i in order]
    params = scalar_parameters(model)
    opt = torch.optim.Adam(params, lr=lr)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    if counter is not None and cost is None:
        cost = TokenPassCost.of(model)
    skipped = _skipped_attention(model) if counter is not None else []
    sums: dict[int, list[float]] = {}
    was_training = model.training
    model.eval()  # no dropout: the scalars are fitted to the deterministic model
    bar = Progress(len(flat), desc or "train scalars", enabled=progress, leave=False, unit="batches")
    try:
        # offloaded weights (accelerate): read again for the backward, never all held (patch/offload.py)
        with frozen_base(model), torch.enable_grad(), training_context(model):
            for e, i in flat:
                batch = batches[i]
                loss = batch_loss(model, batch, objective, teacher[i] if teacher is not None else None)
                opt.zero_grad(set_to_none=True)
                (loss if extra_loss is None else loss + extra_loss(batch)).backward()
                opt.step()
                n = int(loss_positions(batch).sum())
                acc = sums.setdefault(e, [0.0, 0.0])
                acc[0] += loss.item() * n
                acc[1] += n
                if counter is not None:
                    fwd = cost.forward(batch_tokens(batch), n, 0, skipped)
                    counter.forward += fwd
                    counter.backward += BACKWARD_FACTOR * fwd
                bar.update(loss=f"{acc[0] / max(acc[1], 1):.4f}")
    finally:
        bar.close()
        model.train(was_training)
    return [[e, v[0], v[1]] for e, v in sorted(sums.items())], opt.state_dict()


def train_scalars(model: nn.Module, batches: list[dict], *, objective: str, epochs: int, lr: float, seed: int,
                  teacher: list | None = None, counter: PassCounter | None = None, desc: str | None = None,
                  progress: bool = False, cost: TokenPassCost | None = None) -> list[float]:
    """Adam on the scalars for ``epochs`` passes over ``batches`` (each epoch shuffled, seeded by ``seed``);
    returns each epoch's token-weighted mean training loss."""
    gen = torch.Generator().manual_seed(seed)
    schedule = [torch.randperm(len(batches), generator=gen).tolist() for _ in range(epochs)]
    sums, _ = train_schedule(model, batches, schedule, objective=objective, lr=lr, teacher=teacher, counter=counter,
                             cost=cost, desc=desc, progress=progress)
    return [s / max(w, 1) for _, s, w in sums]


def full_forward_passes(cost: TokenPassCost, batches: list[dict]) -> float:
    """Token-passes of the unpatched model's forward over ``batches`` (e.g. a kl teacher's)."""
    return sum(cost.forward(batch_tokens(b), int(loss_positions(b).sum())) for b in batches)


def train_final_scalars(model: nn.Module, batches: list[dict], attention, config: SearchConfig | None = None, *,
                        generic: list[dict] | None = None, teacher: list | None = None,
                        counter: PassCounter | None = None, info: dict | None = None,
                        progress: bool = False) -> list[float]:
    """Hopscotch's final scalars for a fixed set of skipped attention blocks, trained as ``config`` says: its
    ``objective``, ``final_epochs``, ``final_lr``, ``final_batch_size``, ``seed`` and ``guard`` (default
    ``SearchConfig()``, the search's defaults: its guard mixes in generic text, so ``generic`` is needed;
    ``config.replace(guard=ScalarGuard.paper())`` is the paper's training on ``batches`` alone).

    The model is patched if it is not. The scalars start at 1 with the blocks ``attention`` skipped (nothing
    else), then Adam runs ``final_epochs`` epochs over ``batches`` (the calibration batches, regrouped into batches
    of ``final_batch_size`` rows when it is not 0) with the data order seeded by ``seed + FINAL_SEED_OFFSET``; the
    model is left with the trained scalars. For the ``kl`` objective ``teacher`` is the unpatched model's log-probs
    on ``batches`` (used only when they are not regrouped); when it is None it is computed here (its forward passes
    are added to ``counter``). Returns each epoch's mean training loss (empty when ``final_epochs`` is 0 or nothing
    is skipped). The search's final step and any experiment that trains scalars for blocks chosen another way
    (e.g. LLM-Drop's) share this recipe.

    The guard (``guards.ScalarGuard``) adds a generic-text term over ``generic`` (packed text batches, e.g.
    ``prepare_task(...).text_calibration``), a pull toward 1, or early stopping on held-out rows; ``info``, when
    given, receives what the guard did (held-out losses per epoch, the epoch kept).
    """
    config = SearchConfig() if config is None else config
    check_arg(isinstance(config, SearchConfig), "train_final_scalars", "config", config, "a SearchConfig or None")
    attention = sorted(int(i) for i in attention)
    if config.guard.generic_weight and not generic:
        raise ArgumentError(
            f"train_final_scalars: generic_weight={config.guard.generic_weight:g} (the guard mixes generic text into "
            "the training) needs generic=: packed plain text batches, e.g. prepare_task(...).text_calibration; or "
            "pass config.replace(guard=ScalarGuard.paper()) for the paper's training")
    if not is_patched(model):
        patch_model(model)
    reset_scalars(model)
    if config.final_epochs <= 0 or not attention:
        set_skips(model, attention=attention)
        return []
    if config.final_batch_size:
        batches, teacher = rebatch(batches, config.final_batch_size), None  # a teacher is per batch
    if config.objective == "kl" and teacher is None:
        set_skips(model)  # the original model
        teacher = teacher_logprobs(model, batches)
        if counter is not None:
            counter.forward += full_forward_passes(TokenPassCost.of(model), batches)
    set_skips(model, attention=attention)
    if config.guard.off:
        return train_scalars(model, batches, objective=config.objective, epochs=config.final_epochs,
                             lr=config.final_lr, seed=config.seed + FINAL_SEED_OFFSET, teacher=teacher,
                             counter=counter, desc="final scalars", progress=progress)
    return _guarded_training(model, batches, teacher, config, counter, progress=progress, generic=generic or [],
                             info=info if info is not None else {})


def _guarded_training(model, batches, teacher, config: SearchConfig, counter: PassCounter | None, *, progress: bool,
                      generic: list[dict], info: dict) -> list[float]:
    """train_scalars with the config's guard terms, epoch by epoch (the optimizer state carried across epochs)."""
    guard, epochs, seed = config.guard, config.final_epochs, config.seed + FINAL_SEED_OFFSET
    cost = TokenPassCost.of(model)
    skipped = _skipped_attention(model)
    train_idx, held_idx = list(range(len(batches))), []
    if guard.holdout:
        if len(batches) < 2:
            raise ValueError(f"ScalarGuard(holdout={guard.holdout}) needs at least 2 calibration batches; got "
                             f"{len(batches)}")
        perm = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed + HOLDOUT_SEED_OFFSET))
        n_held = min(len(batches) - 1, max(1, round(guard.holdout * len(batches))))
        held_idx, train_idx = sorted(perm[:n_held].tolist()), sorted(perm[n_held:].tolist())
    train = [batches[i] for i in train_idx]
    train_teacher = [teacher[i] for i in train_idx] if teacher is not None else None
    gen = torch.Generator().manual_seed(seed)
    schedule = [torch.randperm(len(train), generator=gen).tolist() for _ in range(epochs)]
    params = scalar_parameters(model)
    stream = GenericText(generic) if guard.generic_weight else None

    def extra(batch: dict) -> torch.Tensor:
        term = torch.zeros((), device=params[0].device)
        if guard.pull:
            term = term + guard.pull * sum((p - 1).pow(2).sum() for p in params)
        if guard.generic_weight:
            b = stream.take(batch_tokens(batch))
            term = term + guard.generic_weight * batch_loss(model, b, "nll")
            if counter is not None:
                fwd = cost.forward(batch_tokens(b), int(loss_positions(b).sum()), 0, skipped)
                counter.forward += fwd
                counter.backward += BACKWARD_FACTOR * fwd
        return term

    def held_loss() -> float:
        total = weight = 0.0
        with torch.no_grad():
            for i in held_idx:
                b = batches[i]
                n = int(loss_positions(b).sum())
                total += batch_loss(model, b, config.objective, teacher[i] if teacher is not None else None).item() * n
                weight += n
                if counter is not None:
                    counter.forward += cost.forward(batch_tokens(b), n, 0, skipped)
        return total / max(weight, 1.0)

    losses, held, state = [], [], None
    best = (held_loss(), 0, [p.detach().clone() for p in params]) if held_idx else None
    if best is not None:
        held.append(best[0])
    for e in range(epochs):
        sums, state = train_schedule(model, train, [schedule[e]], objective=config.objective, lr=config.final_lr,
                                     teacher=train_teacher, optimizer_state=state, counter=counter, cost=cost,
                                     desc="final scalars", progress=progress, extra_loss=extra)
        losses += [s / max(w, 1) for _, s, w in sums]
        if held_idx:
            held.append(held_loss())
            if held[-1] < best[0]:
                best = (held[-1], e + 1, [p.detach().clone() for p in params])
    if best is not None:
        with torch.no_grad():
            for p, v in zip(params, best[2]):
                p.copy_(v)
        info.update({"holdout_rows": held_idx, "holdout_losses": held, "kept_epoch": best[1]})
    info["guard"] = guard.as_dict()
    return losses
