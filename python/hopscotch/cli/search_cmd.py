"""``hopscotch search``: find the blocks to skip, save the plan, and show what it costs and buys."""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

from ..limits import check_num_skip
from .common import CliError, add_model_args, emit, load_from_args, model_export_info

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
again after an interruption and it continues from its last finished step, reaching the same plan."""


def register(sub) -> None:
    p = sub.add_parser("search", help=HELP, description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    d = p.add_argument_group("data")
    d.add_argument("--task", default="arc_easy",
                   help="a packaged task (arc_easy, arc_challenge, boolq, piqa, hellaswag, ... see `hopscotch info`)"
                        " or 'wikipedia' (default arc_easy)")
    d.add_argument("--data", metavar="FILE", default=None,
                   help="a local file instead of --task: plain text, JSONL with 'text', JSONL with 'prompt' and "
                        "'answer', or multiple-choice JSONL ('query', 'choices', 'gold')")
    d.add_argument("--calibration", type=int, default=32, help="calibration items (default 32)")
    d.add_argument("--evaluation", type=int, default=100,
                   help="evaluation items, disjoint from calibration (default 100)")
    d.add_argument("--objective", default="self-distill", choices=["self-distill", "nll", "kl"],
                   help="self-distill: NLL of the original model's own greedy answers (Hopscotch's); nll: of the "
                        "gold answers / the text; kl: to the original model's next-token distribution")
    d.add_argument("--max-new-tokens", type=int, default=48, help="length of the self-distillation answers")
    d.add_argument("--batch-size", type=int, default=4, help="calibration batch size (default 4)")
    d.add_argument("--similarity-data", default="wikipedia", choices=["wikipedia", "task"],
                   help="llm-drop / shortgpt: score similarities on packed Wikipedia text (default, as the papers "
                        "score C4) or on the task's calibration batches")
    s = p.add_argument_group("search")
    s.add_argument("--method", default="hopscotch-fast",
                   choices=["hopscotch", "hopscotch-fast", "llm-drop", "shortgpt", "random"],
                   help="hopscotch: the paper's search (every candidate trained); hopscotch-fast: the same rule on a "
                        "screened shortlist (default; about 8x fewer token-passes at k=8; on SmolLM2 it matched the "
                        "faithful picks on ARC-Easy at k=1..8 and stayed within 2%% on HellaSwag at k=1..4, but ended "
                        "3.6-4.0%% higher in calibration loss on BoolQ at k=3-4 and 8-11%% at k=5-8: use hopscotch "
                        "when the plan matters more than search time); "
                        "llm-drop / shortgpt / random: baselines")
    s.add_argument("--num-skip", "-k", type=int, default=4, help="blocks to skip (default 4)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--lr", type=float, default=1e-2, help="Adam lr when scoring candidates (default 1e-2)")
    s.add_argument("--final-lr", type=float, default=3e-3, help="Adam lr of the final scalars (default 3e-3)")
    s.add_argument("--final-epochs", type=int, default=3, help="epochs of the final scalars (default 3)")
    s.add_argument("--final-batch-size", type=int, default=1,
                   help="batch size of the final scalars' training, over the same calibration rows (default 1: more "
                        "Adam steps for the same tokens; 0 keeps --batch-size)")
    s.add_argument("--candidate-epochs", type=int, default=1,
                   help="training budget of each candidate: epochs over the calibration batches (default 1, the "
                        "paper's); --calibration and --batch-size set the batches")
    s.add_argument("--shortlist", type=int, default=1,
                   help="hopscotch-fast: candidates trained in full per step, at least (default 1)")
    s.add_argument("--max-shortlist", type=int, default=3,
                   help="hopscotch-fast: most candidates trained (or probed) when screening scores are close "
                        "(default 3)")
    s.add_argument("--margin", type=float, default=0.0125,
                   help="hopscotch-fast: candidates whose refined screening loss is within this fraction of the "
                        "best are trained too (default 0.0125)")
    s.add_argument("--probe-fraction", type=float, default=1.0,
                   help="hopscotch-fast: share of an epoch a widened shortlist is probed on before the best "
                        "--shortlist finish (default 1: no probing, the widened shortlist is trained in full)")
    s.add_argument("--screen-fraction", type=float, default=0.15,
                   help="hopscotch-fast: share of the calibration batches every candidate is screened on")
    s.add_argument("--refine", type=int, default=10,
                   help="hopscotch-fast: the best-screened candidates screened again on further batches (default "
                        "10; 0 = none)")
    s.add_argument("--refine-fraction", type=float, default=0.15,
                   help="hopscotch-fast: share of the calibration batches the refinement screens on (default 0.15)")
    s.add_argument("--budget-ratio", type=float, default=8.0,
                   help="hopscotch-fast: spend at most 1/this of the faithful search's token-passes (k=8 and "
                        "before); 0 = no budget (default 8)")
    s.add_argument("--strategy", default="screen", choices=["screen", "lazy"],
                   help="hopscotch-fast: how each step finds the candidates it trains: a fresh screen of every "
                        "candidate (default), or lazy: each candidate's latest trained loss carried from step to "
                        "step, the best one trained again with the best-screened of the next --pool (on SmolLM2 no better "
                        "overall: within 2%% of the faithful search in 14 of 24 (task, k) cells against 15)")
    s.add_argument("--first-probe", type=float, default=0.125,
                   help="lazy: share of an epoch every candidate of the first step is trained on (default 0.125)")
    s.add_argument("--first-finish", type=int, default=3,
                   help="lazy: best first-step probes that finish their epoch (default 3)")
    s.add_argument("--pool", type=int, default=6,
                   help="lazy: candidates after the incumbent, by latest trained loss, screened per step "
                        "(default 6)")
    s.add_argument("--challengers", type=int, default=1,
                   help="lazy: best-screened of the pool trained beside the incumbent per step (default 1)")
    s.add_argument("--target", default="attn", choices=["attn", "mlp", "block", "joint"],
                   help="llm-drop: which modules to drop (default attn)")
    s.add_argument("--iterative", action="store_true", help="llm-drop: rescore after each drop")
    o = p.add_argument_group("output")
    o.add_argument("--out", metavar="PLAN.json", default=None,
                   help="where to save the plan (default plans/<model>-<task>-<method>-k<k>.json)")
    o.add_argument("--state", metavar="FILE", default=None,
                   help="search state for resuming (default: <plan>.state.json)")
    o.add_argument("--no-eval", action="store_true", help="skip the before/after evaluation")
    o.add_argument("--no-speed", action="store_true", help="skip the speed measurement")
    p.set_defaults(handler=run)


def _default_out(args) -> Path:
    model = Path(args.model).stem if args.model else "smollm2-135m"
    task = Path(args.data).stem if args.data else args.task
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{model}-{task}-{args.method}-k{args.num_skip}")
    return Path("plans") / f"{name}.json"


def _check(args) -> None:
    if args.num_skip < 0:
        raise CliError(f"--num-skip {args.num_skip}: expected 0 or more")
    if args.calibration < 1 or args.evaluation < 0:
        raise CliError("--calibration must be at least 1 and --evaluation at least 0")
    if not 0 < args.screen_fraction <= 1:
        raise CliError(f"--screen-fraction {args.screen_fraction}: expected a fraction in (0, 1]")
    if not 0 < args.probe_fraction <= 1:
        raise CliError(f"--probe-fraction {args.probe_fraction}: expected a fraction in (0, 1]")
    if args.refine < 0 or not 0 <= args.refine_fraction < 1:
        raise CliError(f"--refine {args.refine} --refine-fraction {args.refine_fraction}: expected a count >= 0 "
                       "and a fraction in [0, 1)")
    if args.candidate_epochs < 1 or args.shortlist < 1 or args.max_shortlist < 1:
        raise CliError("--candidate-epochs, --shortlist and --max-shortlist must be at least 1")
    if not 0 < args.first_probe <= 1:
        raise CliError(f"--first-probe {args.first_probe}: expected a fraction in (0, 1]")
    if args.first_finish < 1 or args.pool < 0 or args.challengers < 0:
        raise CliError(f"--first-finish {args.first_finish} --pool {args.pool} --challengers {args.challengers}: "
                       "expected --first-finish >= 1, --pool >= 0 and --challengers >= 0")
    if args.budget_ratio and args.budget_ratio <= 1:
        raise CliError(f"--budget-ratio {args.budget_ratio}: expected more than 1, or 0 for no budget")
    for flag, value in (("--lr", args.lr), ("--final-lr", args.final_lr)):
        if not (math.isfinite(value) and value > 0):
            raise CliError(f"{flag} {value}: expected a positive learning rate")
    if not (math.isfinite(args.margin) and args.margin >= 0):
        raise CliError(f"--margin {args.margin}: expected 0 or more")
    for flag, value in (("--batch-size", args.batch_size), ("--max-new-tokens", args.max_new_tokens)):
        if value < 1:
            raise CliError(f"{flag} {value}: expected 1 or more")
    if args.final_epochs < 0 or args.final_batch_size < 0:
        raise CliError(f"--final-epochs {args.final_epochs} --final-batch-size {args.final_batch_size}: expected 0 "
                       "or more")
    if args.data and not Path(args.data).is_file():
        raise CliError(f"--data {args.data}: no such file")
    for flag, value in (("--out", args.out), ("--state", args.state)):
        if value is None:
            continue
        if Path(value).parent.exists() and not Path(value).parent.is_dir():
            raise CliError(f"{flag} {value}: {Path(value).parent} is a file, not a directory")
        if flag == "--state" and Path(value).is_dir():
            raise CliError(f"--state {value} is a directory; expected a file path")
    if args.out is not None:
        _check_plan_destination(args)
    info = model_export_info(args)
    if info is not None:
        raise CliError(f"--model {args.model} is a {info.describe()}: its plan is already in its weights; "
                       "search the original model")
    if not args.data and args.task != "wikipedia":
        from ..data import packaged_tasks

        if args.task not in packaged_tasks():
            raise CliError(f"--task {args.task!r} is not a packaged task; see `hopscotch info` for the list, or "
                           "pass --data FILE")


def _check_plan_destination(args) -> None:
    """--out may replace a plan, never another file (the data, a model, the user's own JSON)."""
    import json

    out = Path(args.out)
    plan_json = out if out.suffix == ".json" else out / "plan.json"
    for flag, value in (("--data", args.data), ("--model", args.model)):
        if value is not None and Path(value).exists() and plan_json.resolve().is_relative_to(Path(value).resolve()):
            raise CliError(f"--out {args.out} would write over or into {flag} {value}; choose another --out")
    if not plan_json.exists():
        return
    try:
        fmt = json.loads(plan_json.read_text(encoding="utf-8")).get("format", "")
    except (OSError, ValueError, AttributeError):
        fmt = ""
    if not str(fmt).startswith("hopscotch-plan/"):
        raise CliError(f"--out {args.out}: {plan_json} exists and is not a hopscotch plan; the search replaces only a "
                       "plan: choose another --out")


def run(args) -> int:
    from ..search import search
    from ..tasks import evaluate_task, prepare_task

    _check(args)
    out = Path(args.out) if args.out else _default_out(args)
    state = Path(args.state) if args.state else out.with_name(out.stem + ".state.json")
    args._interrupt_hint = f"every finished step is saved in {state}; run the same command again to resume"
    model, tok, device = load_from_args(args)
    target = "block" if args.method == "shortgpt" else args.target if args.method == "llm-drop" else "attn"
    check_num_skip(args.num_skip, model.config.num_hidden_layers, target, name="--num-skip")
    progress = not (args.quiet or args.json)
    data = prepare_task(model, tok, args.task, objective=args.objective, calibration=args.calibration,
                        evaluation=args.evaluation, seed=args.seed, max_new_tokens=args.max_new_tokens,
                        batch_size=args.batch_size, data_file=args.data, progress=progress)
    before = {} if args.no_eval else evaluate_task(model, tok, data, progress=progress, keep_items=True)
    if progress:
        print(f"search state: {state} (resumable)", file=sys.stderr)
    similarity = data.text_calibration if args.similarity_data == "wikipedia" else None
    plan = search(model, data.calibration, method=args.method, num_skip=args.num_skip, objective=data.objective,
                  seed=args.seed, lr=args.lr, final_lr=args.final_lr, final_epochs=args.final_epochs,
                  final_batch_size=args.final_batch_size or None,
                  target=args.target, iterative=args.iterative, shortlist=args.shortlist,
                  max_shortlist=args.max_shortlist, margin=args.margin, probe_fraction=args.probe_fraction,
                  budget_ratio=args.budget_ratio or None, candidate_epochs=args.candidate_epochs,
                  screen_fraction=args.screen_fraction, refine=args.refine, refine_fraction=args.refine_fraction,
                  strategy=args.strategy, first_probe=args.first_probe, first_finish=args.first_finish,
                  pool=args.pool, challengers=args.challengers,
                  similarity_batches=similarity, state_path=state,
                  data_info=data.info, progress=progress)
    plan.provenance["model"] = args.model or "packaged SmolLM2-135M-Instruct"
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
    dtype = next(model.parameters()).dtype
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
