"""The quality study (issue 15): which method's skips cost least, with stated uncertainty, on three tasks.

    python experiments/quality_study.py --smoke        # minutes: tiny sizes, every code path, to experiments/results/study_smoke/
    python experiments/quality_study.py --estimate     # the full study's run time, extrapolated from the smoke run's timings
    python experiments/quality_study.py                # the full study (a day or more on 2 CPU cores; resumable)
    python experiments/quality_study.py --report       # CSVs and plots from the rows finished so far
    python experiments/quality_study.py --model gemma3 ...   # the second model, Gemma 3 270M: to experiments/results/gemma3/

Design (SmolLM2-135M-Instruct, fp32):
- methods: hopscotch (faithful), hopscotch-fast, llm-drop (one-shot), llm-drop-iterative, shortgpt (whole layers),
  random; k = 1, 2, 4, 6, 8 attention blocks (ShortGPT: k whole layers);
- calibrated on each of arc_easy, boolq, hellaswag (``--calibration`` items, self-distillation targets, as the
  Hopscotch paper; LLM-Drop / ShortGPT score packed Wikipedia text, as their papers score C4), evaluated on
  ``--evaluation`` disjoint items of the same task (all there are if fewer: ARC-Easy has 570 packaged items) and
  on held-out Wikipedia perplexity (``--wiki-blocks`` blocks of 256 tokens);
- k=4 is calibrated on ``--seeds`` disjoint calibration sets (folds of the same split; the evaluation items stay
  the same), the other k on fold 0;
- transfer at k=4 (fold 0): every plan found on one task is evaluated on the other two tasks.

Cut to fit a day on 2 CPU cores (``--estimate``): the extra calibration folds run every method but the faithful
search (``--fold-methods``; its two folds cost about 3 h per task on BoolQ and HellaSwag); the fold variation of
Hopscotch is measured with the fast search. ``--faithful-every-k`` can cut further (the faithful search at every
k only on the tasks named, at k <= 4 elsewhere). Rows without a faithful plan at their k are compared with the
fast search's (CSV column ``hopscotch_ref``).

Order: task by task, the original and every method at k=4 (fold 0), then the k=4 transfer matrix, then the
other k, then the other folds; an interrupted study has its headline rows first.

Every figure has a 95% percentile-bootstrap interval over items, and every plan a paired test against the
original model and against faithful Hopscotch at the same k on the same items (exact McNemar for accuracy,
paired bootstrap for losses). Per-item values are kept under ``--work/items`` so any other comparison can be
made later. Everything finished is kept under ``--work`` (rows.jsonl, plans, search states, evals): run the same
command again after an interruption and it continues. An evaluation depends only on the plan's blocks and
scalars and on the evaluation data, so equal plans share one (``evals/``): LLM-Drop, ShortGPT and random choose
the same plan whatever the calibration task, a transfer row reuses its plan's Wikipedia perplexity, and a fast
search that picks the faithful blocks gets the faithful plan.
Writes <out>/study.csv, <out>/study.md (tables), <out>/study_<task>.png, and where there are transfer rows
<out>/study_transfer.csv and <out>/study_transfer.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

from hopscotch import SkipPlan, apply_plan, unpatch_model
from hopscotch.atomic import atomic_write_text
from common import PAPER, RESULTS_DIR  # noqa: E402  (first: results go to experiments/results)
from hopscotch.bench.results import metadata
from rows import append_row, read_rows
from hopscotch.models import load_model
from hopscotch.search import search
from hopscotch.search.state import data_digest
from hopscotch.tasks import compare_results, evaluate_task, prepare_task

METHODS = {  # label -> search() arguments (cheap ones first, the faithful search last)
    "random": dict(method="random"),
    "llm-drop": dict(method="llm-drop", target="attn", iterative=False),
    "llm-drop-iterative": dict(method="llm-drop", target="attn", iterative=True),
    "shortgpt": dict(method="shortgpt"),
    "hopscotch-fast": dict(method="hopscotch-fast", guard=PAPER),
    # what `hopscotch search` ships: the fast search with the package's default guard (ScalarGuard()); not in
    # the SmolLM2 study's rows (scalar_guards.py compares the guards there), run on request (--methods)
    "hopscotch-fast-guarded": dict(method="hopscotch-fast"),
    "hopscotch": dict(method="hopscotch", guard=PAPER),
}
DEFAULT_METHODS = ("random", "llm-drop", "llm-drop-iterative", "shortgpt", "hopscotch-fast", "hopscotch")
# --model: the packaged models by name (hopscotch.models.load_model), each with the name its tables carry
MODEL_NAMES = {None: "SmolLM2-135M-Instruct", "gemma3": "Gemma 3 270M"}
TASKS = ("arc_easy", "boolq", "hellaswag")
METRICS = ("eval_loss", "acc", "acc_norm", "wiki_ppl")
SMOKE = dict(tasks="arc_easy,boolq", calibration=2, evaluation=6, ks="1", fold_k=1, seeds=2, wiki_blocks=2,
             text_blocks=2, max_new_tokens=8, final_epochs=1, batch_size=2)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--ks", default="1,2,4,6,8")
    p.add_argument("--model", default=None,
                   help="the model: default the packaged SmolLM2 (results in <out>/), 'gemma3' for the packaged "
                        "Gemma 3 270M (results in <out>/gemma3/), or an HF model directory (<out>/<its name>/)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"methods, some of {', '.join(METHODS)} (default: {', '.join(DEFAULT_METHODS)})")
    p.add_argument("--no-transfer", action="store_true",
                   help="skip the transfer matrix (every plan at --fold-k evaluated on the other tasks)")
    p.add_argument("--calibration", type=int, default=32, help="calibration items per fold (default 32)")
    p.add_argument("--evaluation", type=int, default=1000, help="evaluation items (all there are if fewer)")
    p.add_argument("--seeds", type=int, default=3, help="calibration folds at --fold-k (default 3)")
    p.add_argument("--fold-k", type=int, default=4,
                   help="the k of the headline rows, the transfer matrix and the extra calibration folds, run "
                        "whatever --ks says (default 4)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--final-epochs", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--wiki-blocks", type=int, default=64)
    p.add_argument("--text-blocks", type=int, default=32, help="Wikipedia blocks LLM-Drop / ShortGPT score on")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--faithful-every-k", default=",".join(TASKS),
                   help="tasks on which the faithful search runs at every k (elsewhere at k <= 4); default: all")
    p.add_argument("--fold-methods", default=",".join(m for m in METHODS if m != "hopscotch"),
                   help="methods run on the extra calibration folds (default: all but the faithful search)")
    p.add_argument("--work", default=None, help="resumable work folder (default <out>/study_work)")
    p.add_argument("--out", default=None,
                   help="where the CSV and plots go (default experiments/results, or its folder named by --model)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, every code path (writes under <out>/study_smoke)")
    p.add_argument("--estimate", action="store_true",
                   help="print the full study's estimated run time from the smoke run's timings")
    p.add_argument("--report", action="store_true",
                   help="write the CSVs, summary and plots from the rows finished so far; run nothing")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out or RESULTS_DIR)
    if args.smoke or args.estimate:
        for k, v in SMOKE.items():
            setattr(args, k, v)
        out = out / "study_smoke"
    if args.model is not None and args.out is None:
        out = out / Path(args.model).name
    args.out = str(out)
    args.work = Path(args.work or Path(args.out) / "study_work")
    return args


def _copy_new(src: Path, dst: Path) -> None:
    """Copy the cached-target files of ``src`` that ``dst`` lacks (a cache key names its content)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.glob("*.json") if src.is_dir() else ():
        if not (dst / f.name).exists():
            atomic_write_text(dst / f.name, f.read_text())


def _plan_digest(plan) -> str:
    """What an evaluation depends on in a plan: the skipped blocks and the scalars (not the provenance)."""
    if plan is None:
        return "original"
    h = hashlib.sha256(json.dumps([plan.skipped_attention, plan.skipped_mlp]).encode())
    h.update(plan.scalar_tensor().numpy().tobytes())
    return h.hexdigest()[:16]


def _data_digest(data) -> str:
    """The evaluation data: loss batches, multiple-choice items and Wikipedia blocks."""
    h = hashlib.sha256(data_digest(list(data.eval_batches) + list(data.wiki_batches)).encode())
    h.update(json.dumps([[x.query, list(x.choices), x.gold] for x in data.eval_items]).encode())
    return h.hexdigest()[:12]


class Study:
    def __init__(self, args):
        self.args = args
        self.work = args.work
        (self.work / "items").mkdir(parents=True, exist_ok=True)
        (self.work / "plans").mkdir(parents=True, exist_ok=True)
        self.rows_path = self.work / "rows.jsonl"
        self.rows = read_rows(self.rows_path, lambda r: r["key"])
        self.model, self.tok = (None, None) if args.report else load_model(args.model)
        self.data = {}
        self.progress = not args.quiet

    # ---- data --------------------------------------------------------------------------------------------
    def task_data(self, task, fold=0):
        if (task, fold) not in self.data:
            from hopscotch.data import load_task
            from hopscotch.data.olmo_eval_tasks import DEFAULT_VARIANT

            a = self.args
            from hopscotch.models import cache_dir

            # the original's answers (minutes to generate per task) travel with the work folder
            _copy_new(self.work / "targets", cache_dir() / "targets")
            total = len(load_task(task, DEFAULT_VARIANT))
            evaluation = min(a.evaluation, total - a.calibration * a.seeds)
            t0 = time.perf_counter()
            unpatch_model(self.model)
            d = prepare_task(self.model, self.tok, task, calibration=a.calibration, evaluation=evaluation,
                             batch_size=a.batch_size, max_new_tokens=a.max_new_tokens, wiki_blocks=a.wiki_blocks,
                             text_blocks=a.text_blocks, calibration_fold=fold, progress=self.progress)
            d.info["prepare_seconds"] = round(time.perf_counter() - t0, 1)
            _copy_new(cache_dir() / "targets", self.work / "targets")
            self.data[(task, fold)] = d
        return self.data[(task, fold)]

    # ---- rows --------------------------------------------------------------------------------------------
    def record(self, row):
        row["n_layers"] = self.model.config.num_hidden_layers
        self.rows[row["key"]] = row
        append_row(self.rows_path, row)
        print(json.dumps({k: row[k] for k in ("key", "skipped", *[m for m in METRICS if m in row])}), flush=True)

    def evaluate(self, key, eval_task, plan):
        """Evaluate ``plan`` (None: the original model) on ``eval_task`` and on Wikipedia; per-item values go to
        items/<key>.json, a row with intervals and timings comes back.

        An evaluation is a pure function of the plan (skipped blocks and scalars) and the evaluation data, so each
        part (the task's items, Wikipedia) is computed once per distinct plan and kept under evals/: LLM-Drop,
        ShortGPT and random choose the same plan whatever the task, a transfer row's Wikipedia part is its main
        row's, and the fast search often returns the faithful plan. The row records whether it reused one."""
        data = self.task_data(eval_task)
        parts = {}
        for part, sub in ((eval_task, dataclasses.replace(data, wiki_batches=[])),
                          ("wiki", dataclasses.replace(data, eval_batches=[], eval_items=[]))):
            path = self.work / "evals" / f"{part}_{_plan_digest(plan)}_{_data_digest(sub)}.json"
            if path.exists():
                parts[part] = {**json.loads(path.read_text()), "reused": True}
                continue
            if plan is None:
                unpatch_model(self.model)
            else:
                apply_plan(self.model, plan)
            t0 = time.perf_counter()
            r = evaluate_task(self.model, self.tok, sub, keep_items=True, resamples=self.args.resamples,
                              progress=self.progress)
            r["seconds"] = round(time.perf_counter() - t0, 1)
            atomic_write_text(path, json.dumps(r))
            parts[part] = {**r, "reused": False}
        ev, wiki = parts[eval_task], parts["wiki"]
        items = {**ev.pop("items"), **wiki.pop("items")}
        ev["ci"].update(wiki.pop("ci"))
        out = {k: v for k, v in {**ev, **wiki}.items() if k not in ("seconds", "reused")}
        out["ci"] = ev["ci"]
        atomic_write_text(self.work / "items" / f"{key}.json", json.dumps(items))
        return {**out, "eval_seconds": ev["seconds"], "wiki_seconds": wiki["seconds"],
                "eval_reused": ev["reused"], "wiki_reused": wiki["reused"],
                "eval_n": len(data.eval_items), "wiki_blocks": len(items.get("wiki_ppl", {}).get("nll", []))}

    def items(self, key):
        return json.loads((self.work / "items" / f"{key}.json").read_text())

    # ---- the design --------------------------------------------------------------------------------------
    def run(self):
        a = self.args
        tasks = [t for t in a.tasks.split(",") if t]
        ks = sorted({int(k) for k in a.ks.split(",")})
        methods = [m for m in a.methods.split(",") if m]
        bad = [m for m in methods if m not in METHODS]
        if bad:
            sys.exit(f"unknown methods {bad}; expected some of {', '.join(METHODS)}")
        if a.fold_k < 1:
            sys.exit(f"--fold-k {a.fold_k}: expected a number of skipped blocks >= 1")
        # The headline k always runs (once its rows exist, at no cost): `--ks 6,8` must not move the transfer
        # matrix and the extra folds to k = 8.
        k_seeds = a.fold_k
        ks = sorted(set(ks) | {k_seeds})
        if self.args.report:
            self.write(tasks, ks, methods, k_seeds)
            return
        # The k=4 comparison task by task (the original first) and its transfer matrix (the study's headline),
        # then the other k, then the other calibration folds: an interrupted study has its most important rows.
        for task in tasks:
            key = f"original|{task}"
            if key not in self.rows:
                self.record({"key": key, "kind": "main", "method": "original", "k": 0, "calib": task, "fold": 0,
                             "eval": task, "skipped": [], **self.evaluate(key, task, None)})
            for method in methods:
                self.search_and_evaluate(task, 0, method, k_seeds)
        for task in tasks if not a.no_transfer else ():  # transfer at k_seeds, fold 0
            for method in methods:
                plan = SkipPlan.load(self.work / "plans" / f"{task}_f0_{method}_k{k_seeds}.json")
                for other in tasks:
                    key = f"transfer|{task}|{method}|{k_seeds}|{other}"
                    if other == task or key in self.rows:
                        continue
                    self.record({"key": key, "kind": "transfer", "method": method, "k": k_seeds, "calib": task,
                                 "fold": 0, "eval": other, "skipped": plan.skipped_attention,
                                 **self.evaluate(key, other, plan)})
        every_k = set(a.faithful_every_k.split(","))
        for task in tasks:
            for method in methods:
                for k in ks:
                    if method != "hopscotch" or k <= k_seeds or task in every_k:
                        self.search_and_evaluate(task, 0, method, k)
        fold_methods = set(a.fold_methods.split(","))
        for task in tasks:
            for fold in range(1, a.seeds):
                for method in methods:
                    if method in fold_methods:
                        self.search_and_evaluate(task, fold, method, k_seeds)
        self.write(tasks, ks, methods, k_seeds)

    def search_and_evaluate(self, task, fold, method, k):
        key = f"main|{task}|{fold}|{method}|{k}"
        if key in self.rows:
            return
        a = self.args
        data = self.task_data(task, fold)
        kw = dict(METHODS[method])
        state = self.work / f"{task}_f{fold}_{method}.state.json" if kw["method"].startswith("hopscotch") else None
        unpatch_model(self.model)
        t0 = time.perf_counter()
        plan = search(self.model, data.calibration, num_skip=k, objective=data.objective, seed=fold,
                      final_epochs=a.final_epochs, state_path=state, data_info=data.info,
                      similarity_batches=data.text_calibration, generic_batches=data.text_calibration,
                      progress=self.progress, **kw)  # generic text: read only where a guard mixes it in
        seconds = time.perf_counter() - t0
        plan.save(self.work / "plans" / f"{task}_f{fold}_{method}_k{k}.json")
        prov = plan.provenance
        row = {"key": key, "kind": "main", "method": method, "k": k, "calib": task, "fold": fold, "eval": task,
               "skipped": plan.skipped_attention, "skipped_mlp": plan.skipped_mlp,
               "search_seconds": prov.get("search_seconds", round(seconds, 1)),
               "token_passes": (prov.get("token_passes") or {}).get("total", 0),
               "final_train_loss": (prov.get("final_losses") or [None])[-1],
               "calibration_items": a.calibration, "prepare_seconds": data.info.get("prepare_seconds"),
               **self.evaluate(key, task, plan)}
        self.record(row)

    # ---- outputs -----------------------------------------------------------------------------------------
    def paired(self, key_a, key_b):
        ra, rb = self.rows[key_a], self.rows[key_b]
        a = {**{m: ra.get(m) for m in METRICS}, "items": self.items(key_a)}
        b = {**{m: rb.get(m) for m in METRICS}, "items": self.items(key_b)}
        return compare_results(a, b, resamples=self.args.resamples)

    def write(self, tasks, ks, methods, k_seeds):
        import csv

        from study_report import hop_ref, plot_study, study_markdown

        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        meta = metadata("cpu")
        fields = ["kind", "calib", "fold", "eval", "method", "k", "skipped"]
        for m in METRICS:
            fields += [m, f"{m}_low", f"{m}_high", f"{m}_p_vs_original", f"{m}_p_vs_hopscotch"]
        fields += ["hopscotch_ref", "eval_n", "wiki_blocks", "search_seconds", "token_passes", "final_train_loss", "eval_seconds",
                   "wiki_seconds"]
        for name, kind in (("study.csv", "main"), ("study_transfer.csv", "transfer")):
            rows = [r for r in self.rows.values() if r["kind"] == kind or (kind == "main" and r["method"] ==
                                                                          "original")]
            if not rows:  # no transfer rows (--no-transfer): no empty CSV
                continue
            with (out / name).open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields + list(meta), extrasaction="ignore")
                w.writeheader()
                for r in sorted(rows, key=lambda r: (r["calib"], r["eval"], r["method"], r["k"], r["fold"])):
                    flat = {**r, **meta, "skipped": " ".join(map(str, r["skipped"]))}
                    for m in METRICS:
                        ci = r.get("ci", {}).get(m)
                        if ci:
                            flat[f"{m}_low"], flat[f"{m}_high"] = ci["low"], ci["high"]
                    if r["method"] != "original":
                        base = f"original|{r['eval']}"
                        for m, c in self.paired(base, r["key"]).items():
                            flat[f"{m}_p_vs_original"] = round(c["p_value"], 5)
                        ref = hop_ref(self.rows, r["calib"], r["fold"], r["k"], kind, r["eval"])
                        if ref is not None and r["method"] not in ("hopscotch", self.rows[ref]["method"]):
                            flat["hopscotch_ref"] = self.rows[ref]["method"]
                            for m, c in self.paired(ref, r["key"]).items():
                                flat[f"{m}_p_vs_hopscotch"] = round(c["p_value"], 5)
                    w.writerow(flat)
            print(f"wrote {out / name}")
        name = MODEL_NAMES.get(self.args.model, str(self.args.model))
        (out / "study.md").write_text(study_markdown(self.rows, self.paired, tasks, ks, methods, k_seeds, meta,
                                                     model=name))
        print(f"wrote {out / 'study.md'}")
        self.summary(tasks, methods, k_seeds)
        layers = {r["n_layers"] for r in self.rows.values() if "n_layers" in r} or {30}  # SmolLM2's older rows
        plot_study(self.rows, out, tasks, methods, k_seeds, self.args.calibration, model=name, n_layers=max(layers))

    def summary(self, tasks, methods, k_seeds):
        print(f"\nk={k_seeds} across calibration folds (mean, and min..max over folds), per task:")
        for task in tasks:
            for method in methods:
                rows = [r for r in self.rows.values() if r["kind"] == "main" and r["calib"] == task
                        and r["method"] == method and r["k"] == k_seeds]
                if rows:
                    cells = []
                    for m in METRICS:
                        v = [r[m] for r in rows if m in r]
                        if v:
                            cells.append(f"{m} {sum(v) / len(v):.3f} ({min(v):.3f}..{max(v):.3f})")
                    print(f"  {task:<10} {method:<20} folds={len(rows)}  " + "  ".join(cells))


def estimate(args) -> None:
    """The full study's run time on this machine: per task, from the full study's own finished rows where it has
    them (its work folder), else scaled by the task's characters per item from the tasks measured (or the smoke)."""
    from hopscotch.data import load_task
    from hopscotch.data.olmo_eval_tasks import DEFAULT_VARIANT

    full = parse_args([])
    smoke = list(read_rows(args.work / "rows.jsonl", lambda r: r["key"]).values())
    real_path = full.work / "rows.jsonl"
    real = list(read_rows(real_path, lambda r: r["key"]).values())
    ks = [int(k) for k in full.ks.split(",")]
    tasks = full.tasks.split(",")
    folds = full.seeds - 1
    out, total = [], 0.0

    def chars(task):
        items = load_task(task, DEFAULT_VARIANT)
        return sum(len(x.choices) * len(x.query) + sum(map(len, x.choices)) for x in items) / len(items)

    def candidate_epochs(k, final_epochs):  # the faithful search trains every remaining block at each step
        return sum(30 - s for s in range(k)) + final_epochs

    def eval_rate(rows, task=None):  # seconds per evaluation item (per character when task is None)
        ev = [r for r in rows if r.get("eval_n") and not r.get("eval_reused") and (task is None or r["eval"] == task)]
        if not ev:
            return None
        return sum(r["eval_seconds"] for r in ev) / sum(r["eval_n"] * (1 if task else chars(r["eval"])) for r in ev)

    def search_rate(rows, settings, task=None):  # seconds per calibration item and candidate-epoch
        sr = [r for r in rows if r["method"] == "hopscotch" and r["kind"] == "main" and r.get("search_seconds")
              and (task is None or r["calib"] == task)]
        if not sr:
            return None
        per = [r["search_seconds"] / candidate_epochs(r["k"], settings.final_epochs) / settings.calibration
               for r in sr]
        return sum(per) / len(per) / (1 if task else sum(chars(r["calib"]) for r in sr) / len(sr))

    # per character, for tasks the study has not measured yet: the study's own measured tasks, else the smoke's
    char_eval, char_search = eval_rate(real) or eval_rate(smoke), search_rate(real, full) or search_rate(smoke, args)
    wiki_rows = [r for r in real or smoke if r.get("wiki_blocks") and not r.get("wiki_reused")]
    s_per_block = sum(r["wiki_seconds"] for r in wiki_rows) / max(1, sum(r["wiki_blocks"] for r in wiki_rows))
    every_k = full.faithful_every_k.split(",")
    faithful_ks_of = {t: [k for k in ks if t in every_k or k <= 4] for t in tasks}
    for task in tasks:
        n_items = len(load_task(task, DEFAULT_VARIANT))
        ev_full = min(full.evaluation, n_items - full.calibration * full.seeds)
        measured_eval, measured_search = eval_rate(real, task), search_rate(real, full, task)
        per_eval = ev_full * (measured_eval or char_eval * chars(task))
        per_item_epoch = measured_search or char_search * chars(task)
        # distinct plans evaluated on this task (evaluations are shared by equal plans, see Study.evaluate):
        # the original; the faithful search at its k (all, or k <= 4: see --faithful-every-k); the fast search at
        # each k and on the extra folds; both searches' plans of the other tasks (transfer); the three
        # text-scored / task-blind methods once per k (the same plan whatever the task); random at each k and fold
        faithful_ks = faithful_ks_of[task]
        n_evals = 1 + len(faithful_ks) + len(ks) + folds + 2 * (len(tasks) - 1) + 3 * len(ks) + len(ks) + folds
        # the greedy path to the largest k gives every smaller k on the way; the fast search costs <= 1/8 of it
        faithful = candidate_epochs(max(faithful_ks), full.final_epochs) * per_item_epoch * full.calibration
        faithful4 = candidate_epochs(4, full.final_epochs) * per_item_epoch * full.calibration
        search_s = faithful * (1 + 1 / 8) + folds * faithful4 / 8
        out.append((task, ev_full, n_evals, n_evals * per_eval, search_s, bool(measured_eval),
                    bool(measured_search)))
        total += n_evals * per_eval + search_s
    n_wiki = (1 + sum(map(len, faithful_ks_of.values()))
              + len(tasks) * (len(ks) + folds) + 3 * len(ks) + len(ks) + folds)  # distinct plans overall
    wiki_s = n_wiki * s_per_block * full.wiki_blocks
    total += wiki_s
    print("estimated run time of the full study on this machine (2 CPU cores): per task from the study's own "
          f"finished rows ({real_path}) where it has them ('measured'), else scaled by characters per item from the "
          "tasks it has measured, or from the smoke run ('scaled')")
    for task, ev, n, e, s, me, ms in out:
        print(f"  {task:<10} eval items {ev:>5}  {n} evaluations: {e / 3600:5.1f} h ({'measured' if me else 'scaled'})"
              f"   searches (faithful + fast): {s / 3600:5.1f} h ({'measured' if ms else 'scaled'})")
    print(f"  Wikipedia perplexity of {n_wiki} distinct plans: {wiki_s / 3600:.1f} h")
    print(f"  total {total / 3600:.1f} h (answer generation not included: minutes per task)")
    done = sum((r.get("search_seconds") or 0) + (0 if r.get("eval_reused") else r.get("eval_seconds", 0))
               + (0 if r.get("wiki_reused") else r.get("wiki_seconds", 0)) for r in real)
    print(f"  finished so far: {len(real)} rows, {done / 3600:.1f} h of recorded search and evaluation time")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.estimate:
        estimate(args)
        return 0
    torch.manual_seed(0)
    Study(args).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
