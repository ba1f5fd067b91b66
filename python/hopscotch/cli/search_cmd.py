"""``hopscotch search``: find the blocks to skip, save the plan, and show what it costs and buys."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import sys
from pathlib import Path

from ..limits import check_num_skip
from ..search.config import SearchConfig
from ..search.distributed import DEFAULT_TIMEOUT_S
from ..search.fields import ConfigError
from ..search.objectives import OBJECTIVES
from ..tasks import TaskConfig
from ..utils import model_dtype
from .common import DATA_PATH, CliError, about, add_model_args, emit, load_from_args, model_export_info, path_arg

HELP = "find attention blocks to skip and save the plan (resumable)"
DESCRIPTION = """Search which attention blocks of a model a task does not need.

With no arguments: the packaged SmolLM2-135M-Instruct, calibrated on a split of the packaged ARC-Easy questions
with Hopscotch's objective (the model's own answers), 4 blocks, the fast Hopscotch search; a few minutes on two
CPU cores. Prints a table (blocks skipped, held-out loss, accuracy and Wikipedia perplexity before and after,
each with its 95% bootstrap interval over items, and a paired test of the change; KV memory saved, measured
speed ratio, the search's work in token-passes and wall time) and where it saved the plan.

A token-pass is one token forward through the whole model (every layer and the LM head, weighed by weight
FLOPs); a backward counts as two. LLM-Drop and ShortGPT score packed Wikipedia text by default (their papers
score C4), or the task's calibration batches with --similarity-data task.

The search is resumable: every finished step is written to a state file next to the plan; run the same command
again after an interruption and it continues from its last finished step, reaching the same plan.

--nproc N runs the search on N processes (torchrun's engine), each step's candidates spread over them, the same
plan as one process; several machines: `torchrun --nnodes M --nproc-per-node N --rdzv-backend c10d
--rdzv-endpoint HOST:PORT -m hopscotch search ...` on each (see docs/DISTRIBUTED.md). Rank 0 alone writes the
state and the plan, and evaluates; a run stopped on any rank resumes with any number of processes."""


def register(sub) -> None:
    p = sub.add_parser("search", help=HELP, description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    task = TaskConfig()
    d = p.add_argument_group("data")
    d.add_argument("--task", default="arc_easy",
                   help="a packaged task (arc_easy, arc_challenge, boolq, piqa, hellaswag, ... see `hopscotch info`)"
                        " or 'wikipedia' (default arc_easy)")
    d.add_argument("--data", metavar="FILE", default=None,
                   help="a local file instead of --task: plain text, JSONL with 'text', JSONL with 'prompt' and "
                        "'answer', or multiple-choice JSONL ('query', 'choices', 'gold')")
    d.add_argument("--calibration", type=int, default=task.calibration,
                   help=f"calibration items (default {task.calibration})")
    d.add_argument("--evaluation", type=int, default=task.evaluation,
                   help=f"evaluation items, disjoint from calibration (default {task.evaluation})")
    d.add_argument("--data-seed", type=int, default=task.seed,
                   help="seed of the split into calibration and evaluation items (`hopscotch eval --data-seed` takes "
                        f"the same; --seed seeds the search; default {task.seed})")
    d.add_argument("--objective", default=task.objective, choices=OBJECTIVES,
                   help="self-distill: NLL of the original model's own greedy answers (Hopscotch's); nll: of the "
                        "gold answers / the text; kl: to the original model's next-token distribution")
    d.add_argument("--max-new-tokens", type=int, default=task.max_new_tokens,
                   help=f"length of the self-distillation answers (default {task.max_new_tokens})")
    d.add_argument("--batch-size", type=int, default=task.batch_size,
                   help=f"calibration batch size (default {task.batch_size})")
    d.add_argument("--similarity-data", default="wikipedia", choices=["wikipedia", "task"],
                   help="llm-drop / shortgpt: score similarities on packed Wikipedia text (default, as the papers "
                        "score C4) or on the task's calibration batches")
    _add_config_args(p)
    o = p.add_argument_group("output")
    o.add_argument("--out", metavar="PLAN.json", default=None,
                   help="where to save the plan (default plans/<model>-<task>-<method>-k<k>.json)")
    o.add_argument("--state", metavar="FILE", default=None,
                   help="search state for resuming (default: <plan>.state.json)")
    o.add_argument("--no-eval", action="store_true", help="skip the before/after evaluation")
    o.add_argument("--no-speed", action="store_true", help="skip the speed measurement")
    r = p.add_argument_group("processes (torch.distributed)")
    r.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="run on N processes of this machine (torchrun's engine: gloo on CPU, NCCL on GPUs, one GPU "
                        "per process), each step's candidates spread over them; the same plan as one process "
                        "(default 1)")
    r.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help="a process waiting longer than this for another (which died or hung) ends the run "
                        f"(default {DEFAULT_TIMEOUT_S:g}; at least one candidate's training)")
    p.set_defaults(handler=run)


def _default_out(args) -> Path:
    model = Path(args.model).stem if args.model else "smollm2-135m"
    task = Path(args.data).stem if args.data else args.task
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{model}-{task}-{args.method}-k{args.num_skip}")
    return Path("plans") / f"{name}.json"


def _add_config_args(p) -> None:
    """One flag per SearchConfig setting: its name, type, default, choices and help come from the field."""
    defaults, groups = SearchConfig(), {None: p.add_argument_group("search")}
    described = {f.name: f.metadata["help"] for f in dataclasses.fields(SearchConfig)}
    for group, name, f in SearchConfig.settings():
        meta = f.metadata
        if not meta["cli"]:
            continue
        if group not in groups:
            groups[group] = p.add_argument_group(f"search: {described[group]}")
        default = defaults.value(group, name)
        flags = [f"--{name.replace('_', '-')}"] + ([meta["short"]] if meta["short"] else [])
        text = f"{meta['help']} (default {default})".replace("%", "%%")
        if isinstance(default, bool):
            groups[group].add_argument(*flags, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            groups[group].add_argument(*flags, type=type(default), default=default, choices=meta["choices"],
                                       help=text)


def config_from_args(args) -> SearchConfig:
    """The SearchConfig the flags give; a bad value is named by its flag."""
    values = {name: getattr(args, name) for _, name, f in SearchConfig.settings() if f.metadata["cli"]}
    try:
        return SearchConfig().replace(**values)
    except ConfigError as exc:
        raise CliError(f"--{exc.name.replace('_', '-')} {exc.value}: expected {exc.expected}") from None


def _check(args) -> SearchConfig:
    config = config_from_args(args)
    for flag, value, low in (("--calibration", args.calibration, 1), ("--evaluation", args.evaluation, 0),
                             ("--batch-size", args.batch_size, 1), ("--max-new-tokens", args.max_new_tokens, 1),
                             ("--nproc", args.nproc, 1)):
        if value < low:
            raise CliError(f"{flag} {value}: expected {low} or more")
    if not args.dist_timeout > 0:
        raise CliError(f"--dist-timeout {args.dist_timeout:g}: expected a number of seconds above 0")
    path_arg("--data", args.data, expected=DATA_PATH)
    out = Path(args.out) if args.out else _default_out(args)
    _check_plan_destination(args, out)
    path_arg("--out", out, kind="file" if out.suffix == ".json" else "dir", output=True)
    path_arg("--state", args.state, output=True)
    info = model_export_info(args)
    if info is not None:
        raise CliError(f"--model {args.model} is a {info.describe()}: its plan is already in its weights; "
                       "search the original model")
    if not args.data and args.task != "wikipedia":
        from ..data import packaged_tasks

        if args.task not in packaged_tasks():
            raise CliError(f"--task {args.task!r} is not a packaged task; see `hopscotch info` for the list, or "
                           "pass --data FILE")
    return config


def _check_plan_destination(args, out: Path) -> None:
    """--out may replace a plan, never another file (the data, a model, the user's own JSON)."""
    import json

    plan_json = out if out.suffix == ".json" else out / "plan.json"
    for flag, value in (("--data", args.data), ("--model", args.model)):
        if value is not None and Path(value).exists() and plan_json.resolve().is_relative_to(Path(value).resolve()):
            raise CliError(f"--out {out} would write over or into {flag} {value}; choose another --out")
    if not plan_json.exists():
        return
    try:
        fmt = json.loads(plan_json.read_text(encoding="utf-8")).get("format", "")
    except (OSError, ValueError, AttributeError):
        fmt = ""
    if not str(fmt).startswith("hopscotch-plan/"):
        raise CliError(f"--out {out}: {plan_json} exists and is not a hopscotch plan; the search replaces only a "
                       "plan: choose another --out")


def run(args) -> int:
    import torch

    from ..search import search
    from ..search.distributed import init_from_env
    from ..tasks import evaluate_task, prepare_task

    config = _check(args)
    out = Path(args.out) if args.out else _default_out(args)
    state = Path(args.state) if args.state else out.with_name(out.stem + ".state.json")
    args._interrupt_hint = f"every finished step is saved in {state}; run the same command again to resume"
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:  # the launcher; the ranks run the rest
        from .launch import launch

        return launch(args.nproc, sys.argv[1:] if args.argv is None else args.argv,
                      state_hint=args._interrupt_hint + " (any --nproc)")
    ranks = init_from_env(args.dist_timeout)
    if ranks.world > 1 and args.device in ("auto", "cuda") and torch.cuda.is_available():
        args.device = f"cuda:{torch.cuda.current_device()}"  # one GPU per rank (init_from_env chose it)
    main = ranks.main  # rank 0 evaluates, measures, prints and writes; the others train candidates
    args.quiet = args.quiet or not main
    model, tok, device = load_from_args(args)
    check_num_skip(config.num_skip, model.config.num_hidden_layers, config.skip_kind, name="--num-skip")
    progress = not (args.quiet or args.json) and main
    task = TaskConfig(objective=args.objective, calibration=args.calibration, evaluation=args.evaluation,
                      seed=args.data_seed, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                      data_file=args.data)
    with about("--data", args.data) if args.data else contextlib.nullcontext():
        data = prepare_task(model, tok, args.task, task, progress=progress)
    before = {} if args.no_eval or not main else evaluate_task(model, tok, data, progress=progress, keep_items=True)
    if progress:
        print(f"search state: {state} (resumable)", file=sys.stderr)
    similarity = data.text_calibration if args.similarity_data == "wikipedia" else None
    # the state file is the option's, or lies beside --out's plan: an OSError writing it names the one given
    state_flag = ("--state", state, "it") if args.state else ("--out", out, f"the search state beside it ({state})")
    with about(state_flag[0], state_flag[1], "write", what=state_flag[2], refusals=False):
        plan = search(model, data.calibration, config.replace(objective=data.objective),
                      similarity_batches=similarity, generic_batches=data.text_calibration, state_path=state,
                      data_info=data.info, progress=progress)
    if not main:
        return 0
    plan.provenance["model"] = args.model or "packaged SmolLM2-135M-Instruct"
    with about("--out", out, "write", refusals=False):
        path = plan.save(out)
    after = {} if args.no_eval else evaluate_task(model, tok, data, progress=progress, keep_items=True)
    comparison = {}
    if before and after:
        from ..tasks import compare_results

        comparison = compare_results(before, after)
    before.pop("items", None)
    after.pop("items", None)
    result = {"plan": str(path), "skipped_attention": plan.skipped_attention, "skipped_mlp": plan.skipped_mlp,
              "before": before, "after": after, "change": comparison,
              "provenance": {k: plan.provenance.get(k) for k in ("method", "token_passes", "wall_seconds")}}
    result.update(_costs(model, plan, device, args))
    emit(args, result, _table(result, model.config.num_hidden_layers))
    return 0


def _costs(model, plan, device, args) -> dict:
    from ..bench.e2e import kv_bytes_per_token, speed_ratio
    from ..patch import unpatch_model
    from ..patch.apply import apply_plan

    L = model.config.num_hidden_layers
    dtype = model_dtype(model)
    full = kv_bytes_per_token(model.config, dtype, L)
    kept = kv_bytes_per_token(model.config, dtype, L - len(plan.skipped_attention))
    out = {"kv_bytes_per_token": {"original": full, "skipped": kept, "saved_fraction": 1 - kept / full}}
    if not args.no_speed:
        unpatch_model(model)
        out["speed"] = speed_ratio(model, plan.skipped_attention)
        apply_plan(model, plan)
    return out


def _fmt_ci(result: dict, key: str, spec: str) -> str:
    if key not in result:
        return "-"
    ci = result.get("ci", {}).get(key)
    v = format(result[key], spec)
    return f"{v} [{format(ci['low'], spec)}, {format(ci['high'], spec)}]" if ci else v


def _table(r: dict, num_layers: int) -> str:
    b, a = r["before"], r["after"]
    lines = [f"skipped attention blocks: {r['skipped_attention'] or 'none'} ({len(r['skipped_attention'])} of "
             f"{num_layers})" + (f"; MLP blocks: {r['skipped_mlp']}" if r["skipped_mlp"] else ""), ""]
    if b or a:
        lines.append(f"{'':<30}{'before':>24}{'after':>24}   change: p (paired test)")
        for key, label, spec in (("eval_loss", "held-out loss (NLL)", ".4f"), ("acc", "accuracy", ".3f"),
                                 ("acc_norm", "accuracy (length-normalised)", ".3f"),
                                 ("wiki_ppl", "Wikipedia perplexity", ".2f")):
            if key in b or key in a:
                c = r.get("change", {}).get(key)
                verdict = f"   p={c['p_value']:.3f}{' *' if c['significant'] else ''}" if c else ""
                lines.append(f"{label:<30}{_fmt_ci(b, key, spec):>24}{_fmt_ci(a, key, spec):>24}{verdict}")
        n = (b.get("ci") or a.get("ci") or {}).get("eval_loss", {}).get("n")
        lines.append(f"[95% intervals: bootstrap over the {n or ''} evaluation items (Wikipedia: text blocks); "
                     "* = significant change at 5%]")
        lines.append("")
    kv = r["kv_bytes_per_token"]
    lines.append(f"KV cache per token: {kv['original']:,} -> {kv['skipped']:,} bytes "
                 f"({100 * kv['saved_fraction']:.1f}% saved)")
    if "speed" in r:
        s = r["speed"]
        lines.append(f"measured speed vs the unpatched model ({s['setting']['device']}, prompt "
                     f"{s['setting']['prompt_len']}, batch {s['setting']['batch']}): decode x{s['decode_speedup']:.2f}"
                     f" ({s['hf']['decode_tokens_per_s']:.1f} -> {s['hopscotch']['decode_tokens_per_s']:.1f} tok/s), "
                     f"prefill x{s['prefill_speedup']:.2f}")
    tp = r["provenance"].get("token_passes")
    lines.append(f"search: {r['provenance']['method']}, {r['provenance']['wall_seconds']:.0f} s"
                 + (f", {tp['total']:,} token-passes (1 = one token forward through the whole model; "
                    "backward = 2)" if tp else ""))
    lines.append(f"plan saved to {r['plan']}")
    return "\n".join(lines)
