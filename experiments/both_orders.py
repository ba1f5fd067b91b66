"""Hopscotch and quantization, both orders (issue 43): search a quantized model, or quantize a searched one?

    python experiments/both_orders.py                    # 3 tasks, k = 4, torchao int8 weight-only (resumable)
    python experiments/both_orders.py --ks 4,8           # and k = 8
    python experiments/both_orders.py --speeds           # decode tokens/s of the finished rows (after the rest)
    python experiments/both_orders.py --report           # the tables from the rows finished so far

Rows per task and k (SmolLM2-135M-Instruct, float32 activations):
- original: the float32 model; quantized: the same, quantized (``--scheme``), nothing skipped;
- hopscotch: the fast search (the package default) on the float32 model, evaluated in float32;
- quantize -> search: the same search run on the quantized model;
- search -> quantize: the float32 search's plan folded into the float32 weights (what ``hopscotch export
  --format vanilla`` writes: scalars in o_proj / down_proj, a skipped block's o_proj zero), then quantized;
  evaluated with the same blocks skipped (unit scalars);
- llm-drop (quantized): LLM-Drop's one-shot attention drop, scored on the quantized model.

Both searches calibrate on the same items toward the same targets: the float32 original's greedy answers
(self-distillation, as the quality study; the quantized model's own answers would make quantize -> search
reproduce the quantization error). Evaluation (experiments/quality_study.py's): held-out loss (NLL of the
original's answers on disjoint items), 0-shot accuracy, Wikipedia perplexity, 95% bootstrap intervals, paired
tests. Per row also the bytes of the weights the thin model keeps (a skipped block's attention weights dropped,
tied embeddings once) and decode tokens/s (1 thread, every row under hopscotch's patch, interleaved rounds).

The float32 search resumes from the quality study's archived search states where they match (same calibration
items, targets and settings: fold 0, 32 items), so it costs nothing when they do; everything finished is kept
under --work (rows, plans, search states, per-item values): run the same command again and it continues.
Writes experiments/results/both_orders.md and .csv.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from hopscotch import SkipPlan, apply_plan, patch_model, unpatch_model
from hopscotch.atomic import atomic_write_text
from common import PAPER, RESULTS_DIR  # noqa: E402  (first: results go to experiments/results)
from hopscotch.bench.results import metadata
from rows import append_row, read_rows  # noqa: E402  (experiments/rows.py)
from hopscotch.models import cache_dir, load_model
from hopscotch.search import search
from hopscotch.search.state import StateMismatchError
from hopscotch.tasks import compare_results, evaluate_task, prepare_task

TASKS = ("arc_easy", "boolq", "hellaswag")
ROWS = ("original", "quantized", "hopscotch", "quantize-search", "search-quantize", "llm-drop-q")
FAST = dict(method="hopscotch-fast", guard=PAPER)
LLM_DROP = dict(method="llm-drop", target="attn", iterative=False)
SPEED_PROMPT = "The history of the city begins in the Roman period, when a settlement grew up around the river. "


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--ks", default="4")
    p.add_argument("--scheme", default="int8", choices=("int8", "int4"),
                   help="torchao weight-only: int8 per channel, or int4 in groups of 32 (default int8)")
    p.add_argument("--rows", default=",".join(ROWS[2:]),
                   help="which rows with skips to run (another process may run the others into the same --work)")
    p.add_argument("--calibration", type=int, default=32, help="calibration items (the quality study's fold 0)")
    p.add_argument("--evaluation", type=int, default=200, help="evaluation items (the study's: 1000)")
    p.add_argument("--wiki-blocks", type=int, default=24, help="256-token Wikipedia blocks (the study's: 64)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--final-epochs", type=int, default=3)
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--speeds", action="store_true", help="measure the decode speed of the finished rows, then report")
    p.add_argument("--speed-rounds", type=int, default=3, help="interleaved decode-speed rounds")
    p.add_argument("--work", default=None, help="resumable work folder (default <out>/both_orders_work)")
    p.add_argument("--out", default=str(RESULTS_DIR))
    p.add_argument("--report", action="store_true", help="write the tables from the finished rows; run nothing")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.work = Path(args.work or Path(args.out) / f"both_orders_{args.scheme}_work")
    return args


def quantize(model, scheme: str):
    import torchao.quantization as q

    config = q.Int8WeightOnlyConfig() if scheme == "int8" else \
        q.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=q.PerGroup(32))
    q.quantize_(model, config)
    return model


def weight_bytes(model, skipped_attention=()) -> int:
    """Bytes of the weights a thin export keeps: quantized tensors by their inner tensors (data and scales), the
    skipped blocks' attention weights (and their input norm) left out, each shared tensor once."""
    from hopscotch.plan import SCALAR_NAMES

    drop = tuple(f"layers.{i}.{part}" for i in skipped_attention for part in ("self_attn.", "input_layernorm."))
    total, seen = 0, set()
    for name, p in model.named_parameters():
        if name.rsplit(".", 1)[-1] in SCALAR_NAMES or any(d in name for d in drop) or id(p) in seen:
            continue
        seen.add(id(p))
        t = p.data
        if hasattr(t, "__tensor_flatten__") and type(t) is not torch.Tensor:
            total += sum(getattr(t, n).nbytes for n in t.__tensor_flatten__()[0])
        else:
            total += t.nbytes
    return total


def decode_tok_s(model, tok, plan, new=32, prompt=128) -> float:
    ids = tok(SPEED_PROMPT * 8, return_tensors="pt")["input_ids"][:, :prompt]
    if plan is None:
        patch_model(model)
    else:
        apply_plan(model, plan)
    with torch.no_grad():
        mask = torch.ones_like(ids)
        model.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=False)
        t = time.perf_counter()
        model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    return new / (time.perf_counter() - t)


def r_needed(keys, row, rows) -> bool:
    """``row`` is asked for (--rows) and not finished."""
    return row in keys and keys[row] not in rows


class BothOrders:
    def __init__(self, args):
        self.args = args
        self.work = args.work
        for sub in ("items", "plans"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        self.rows_path = self.work / "rows.jsonl"
        self.rows = read_rows(self.rows_path, lambda r: r["key"])
        self.progress = not args.quiet
        if args.report:
            return
        torch.manual_seed(0)
        self.fp, self.tok = load_model(None)
        self.q = quantize(copy.deepcopy(self.fp), args.scheme).eval()

    def task_data(self, task):
        a = self.args
        study = RESULTS_DIR / "study_work"
        for f in (study / "targets").glob("*.json"):  # the original's answers, generated by the quality study
            dst = cache_dir() / "targets" / f.name
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, dst)
        unpatch_model(self.fp)
        return prepare_task(self.fp, self.tok, task, calibration=a.calibration, evaluation=a.evaluation,
                            batch_size=a.batch_size, wiki_blocks=a.wiki_blocks, progress=self.progress)

    def record(self, key, model, plan, data, **extra):
        if plan is None:
            unpatch_model(model)
        else:
            apply_plan(model, plan)
        t0 = time.perf_counter()
        r = evaluate_task(model, self.tok, data, keep_items=True, resamples=self.args.resamples,
                          progress=self.progress)
        atomic_write_text(self.work / "items" / f"{key}.json", json.dumps(r.pop("items")))
        skipped = plan.skipped_attention if plan is not None else []
        row = {"key": key, **extra, "skipped": skipped, **r, "eval_seconds": round(time.perf_counter() - t0, 1),
               "weight_bytes": weight_bytes(model, skipped), "eval_n": len(data.eval_items)}
        self.rows[key] = row
        append_row(self.rows_path, row)
        print(json.dumps({k: row[k] for k in ("key", "skipped", "eval_loss", "acc", "wiki_ppl", "weight_bytes")}),
              flush=True)

    def search(self, model, data, k, kw, name):
        path = self.work / "plans" / f"{name}.json"
        if path.exists():
            return SkipPlan.load(path)
        state = self.work / f"{name.rsplit('_k', 1)[0]}.state.json" if kw["method"].startswith("hopscotch") else None
        unpatch_model(model)

        def run():
            return search(model, data.calibration, num_skip=k, objective=data.objective, seed=0,
                          final_epochs=self.args.final_epochs, state_path=state, data_info=data.info,
                          similarity_batches=data.text_calibration, progress=self.progress, **kw)

        try:
            plan = run()
        except StateMismatchError as e:  # the quality study's state, for other data or settings: start afresh
            print(f"{name}: {e}; searching afresh", flush=True)
            state.unlink()
            plan = run()
        unpatch_model(model)
        plan.save(path)
        return plan

    def folded_quantized(self, plan):
        """The float32 model with ``plan`` folded into its weights (the vanilla export), quantized; and the plan
        of its skipped blocks with unit scalars (so the skipped attention is not computed)."""
        from hopscotch.export.fold import folded_weights

        unpatch_model(self.fp)
        sd, materialize = folded_weights(self.fp, plan, keep_skipped=True)
        m = copy.deepcopy(self.fp)
        missing, unexpected = m.load_state_dict({k: materialize(k) for k in sd}, strict=False)
        assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
        quantize(m.eval(), self.args.scheme)
        return m, SkipPlan.for_model(m, skipped_attention=plan.skipped_attention)

    def run(self):
        a = self.args
        tasks = [t for t in a.tasks.split(",") if t]
        ks = sorted({int(k) for k in a.ks.split(",")})
        for task in tasks:
            data = None

            def need():
                nonlocal data
                data = data or self.task_data(task)
                return data

            for name, model in (("original", self.fp), ("quantized", self.q)):
                key = f"{name}|{task}|0"
                if key not in self.rows:
                    self.record(key, model, None, need(), row=name, task=task, k=0)
            for k in ks:
                self.task_k(task, k, need)
            self.write(tasks, ks)  # the tables so far, after each task

    def task_k(self, task, k, need):
        study = RESULTS_DIR / "study_work" / f"{task}_f0_hopscotch-fast.state.json"
        mine = self.work / f"{task}_fp32_fast.state.json"
        if study.is_file() and not mine.exists():
            shutil.copyfile(study, mine)  # the quality study's search on the same data: resumed, or refused
        keys = {r: f"{r}|{task}|{k}" for r in ROWS[2:] if r in self.args.rows.split(",")}
        if all(key in self.rows for key in keys.values()):
            return
        data = need()
        t0 = time.perf_counter()
        fp_plan = self.search(self.fp, data, k, FAST, f"{task}_fp32_fast_k{k}")
        fp_s = round(time.perf_counter() - t0, 1)
        if r_needed(keys, "hopscotch", self.rows):
            self.record(keys["hopscotch"], self.fp, fp_plan, data, row="hopscotch", task=task, k=k, search_s=fp_s)
        if r_needed(keys, "quantize-search", self.rows):
            t0 = time.perf_counter()
            q_plan = self.search(self.q, data, k, FAST, f"{task}_q_fast_k{k}")
            self.record(keys["quantize-search"], self.q, q_plan, data, row="quantize-search", task=task, k=k,
                        search_s=round(time.perf_counter() - t0, 1))
        if r_needed(keys, "search-quantize", self.rows):
            m, unit = self.folded_quantized(fp_plan)
            self.record(keys["search-quantize"], m, unit, data, row="search-quantize", task=task, k=k)
        if r_needed(keys, "llm-drop-q", self.rows):
            plan = self.search(self.q, data, k, LLM_DROP, f"{task}_q_llmdrop_k{k}")
            self.record(keys["llm-drop-q"], self.q, plan, data, row="llm-drop-q", task=task, k=k)

    # ---- decode speed ------------------------------------------------------------------------------------------
    def speeds(self, tasks, ks):
        """Decode tokens/s of every row's model, 1 thread, interleaved over rounds (median); kept in speeds.json."""
        path = self.work / "speeds.json"
        done = json.loads(path.read_text()) if path.exists() else {}
        todo = [key for key in self.rows if key not in done]
        if not self.args.speeds or not todo:
            return done
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        configs = {}
        for key in todo:
            row = self.rows[key]
            plan = None if row["k"] == 0 else SkipPlan.load(self.work / "plans" / self._plan_file(row))
            model = self.q if row["row"] in ("quantized", "quantize-search", "llm-drop-q") else self.fp
            if row["row"] == "search-quantize":
                model, plan = self.folded_quantized(plan)
            configs[key] = (model, plan)
        times = {key: [] for key in configs}
        for _ in range(self.args.speed_rounds):
            for key, (model, plan) in configs.items():
                times[key].append(decode_tok_s(model, self.tok, plan))
                unpatch_model(model)
        torch.set_num_threads(threads)
        done.update({key: round(statistics.median(v), 2) for key, v in times.items()})
        atomic_write_text(path, json.dumps(done, indent=1))
        return done

    @staticmethod
    def _plan_file(row):
        name = {"hopscotch": "fp32_fast", "search-quantize": "fp32_fast", "quantize-search": "q_fast",
                "llm-drop-q": "q_llmdrop"}[row["row"]]
        return f"{row['task']}_{name}_k{row['k']}.json"

    def paired(self, key_a, key_b):
        items = {key: json.loads((self.work / "items" / f"{key}.json").read_text()) for key in (key_a, key_b)}
        a = {**self.rows[key_a], "items": items[key_a]}
        b = {**self.rows[key_b], "items": items[key_b]}
        return compare_results(a, b, resamples=self.args.resamples)

    def write(self, tasks, ks):
        from both_orders_report import write_tables

        speeds = self.speeds(tasks, ks)
        write_tables(self.rows, speeds, self.paired, tasks, ks, self.args, metadata("cpu"))


def main(argv=None) -> int:
    args = parse_args(argv)
    study = BothOrders(args)
    if args.report or args.speeds:
        tasks = [t for t in args.tasks.split(",") if t]
        study.write(tasks, sorted({int(k) for k in args.ks.split(",")}))
    else:
        study.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
