"""Markdown tables of the quality study (experiments/quality_study.py): the k=4 comparison per task, the transfer
matrix, the calibration folds and the sweep over k. ``study_markdown`` reads the study's rows and a paired-test
function; it computes nothing but the paired tests and can be run on an unfinished study."""

from __future__ import annotations

import math

ORDER = ("hopscotch", "hopscotch-fast", "hopscotch-fast-guarded", "llm-drop", "llm-drop-iterative", "shortgpt",
         "random")
LABELS = {"hopscotch": "hopscotch", "hopscotch-fast": "hopscotch-fast",
          "hopscotch-fast-guarded": "hopscotch-fast, default guard", "llm-drop": "llm-drop",
          "llm-drop-iterative": "llm-drop iterative", "shortgpt": "shortgpt (whole layers)", "random": "random"}


def value_cell(row, metric, digits=3):
    """``value [low, high]`` of a row's metric (its 95% interval), the value alone without one, "-" without it."""
    if metric not in row:
        return "-"
    ci = row.get("ci", {}).get(metric)
    v = f"{row[metric]:.{digits}f}"
    return f"{v} [{ci['low']:.{digits}f}, {ci['high']:.{digits}f}]" if ci else v


def _p(c):
    if c is None:
        return "-"
    p = c["p_value"]
    return "<0.001" if p < 0.001 else f"{p:.2f}" if p < 0.995 else "1"


def paired_p_cells(rows, paired, key, refs, fmt, metrics=("eval_loss", "acc", "wiki_ppl")) -> list[str]:
    """One cell per reference row: ``fmt`` of each metric's paired test of ``key`` against it, joined by " / ";
    "-" where the reference is the row itself or was not run."""
    cells = []
    for ref in refs:
        if ref == key or ref not in rows:
            cells.append("-")
            continue
        c = paired(ref, key)
        cells.append(" / ".join(fmt(c[m]) for m in metrics))
    return cells


def hop_ref(rows, calib, fold, k, kind="main", eval_task=None):
    """The faithful Hopscotch row to compare with, or the fast search's where the faithful one was not run."""
    for hop in ("hopscotch", "hopscotch-fast"):
        key = (f"main|{calib}|{fold}|{hop}|{k}" if kind == "main"
               else f"transfer|{calib}|{hop}|{k}|{eval_task}")
        if key in rows:
            return key
    return None


def k_table(rows, paired, task, methods, k):
    """The k-block comparison on one task (fold 0), with intervals and paired tests against Hopscotch."""
    base = rows.get(f"original|{task}")
    ref = hop_ref(rows, task, 0, k)
    lines = [f"| method | skipped | held-out loss | accuracy | Wikipedia ppl | p vs {ref.split('|')[3] if ref else '-'}:"
             " loss / acc / ppl | p vs original: acc |", "|---|---|---|---|---|---|---|"]
    if base:
        lines.append(f"| original | - | {value_cell(base, 'eval_loss')} | {value_cell(base, 'acc')} | "
                     f"{value_cell(base, 'wiki_ppl', 2)} | | |")
    for method in sorted(methods, key=lambda m: ORDER.index(m) if m in ORDER else len(ORDER)):
        key = f"main|{task}|0|{method}|{k}"
        r = rows.get(key)
        if r is None:
            continue
        ps = ""
        if ref and key != ref:
            c = paired(ref, key)
            ps = " / ".join(_p(c.get(m)) for m in ("eval_loss", "acc", "wiki_ppl"))
        po = _p(paired(f"original|{task}", key).get("acc")) if base else "-"
        lines.append(f"| {LABELS.get(method, method)} | {' '.join(map(str, r['skipped']))} | "
                     f"{value_cell(r, 'eval_loss')} | {value_cell(r, 'acc')} | {value_cell(r, 'wiki_ppl', 2)} | "
                     f"{ps} | {po} |")
    return "\n".join(lines)


def transfer_table(rows, paired, tasks, method, k):
    """Accuracy (and held-out loss) of the plan calibrated on each row's task, evaluated on each column's task,
    with the p-value against the plan calibrated on the column's own task (is a task's own plan better?), and the
    plan's Wikipedia perplexity (the same whatever task it is evaluated on)."""
    head = "| calibrated on \\ evaluated on | " + " | ".join(tasks) + " | Wikipedia ppl |"
    lines = [head, "|---|" + "---|" * (len(tasks) + 1)]
    for ct in tasks:
        cells = []
        for et in tasks:
            key = f"main|{ct}|0|{method}|{k}" if ct == et else f"transfer|{ct}|{method}|{k}|{et}"
            r = rows.get(key)
            if r is None:
                cells.append("-")
                continue
            cell = (f"loss {value_cell(r, 'eval_loss')}, acc {value_cell(r, 'acc')}" if "eval_loss" in r
                    else value_cell(r, "acc"))
            own = f"main|{et}|0|{method}|{k}"
            if ct != et and own in rows:
                c = paired(own, key)
                cell += f" (p vs own: loss {_p(c.get('eval_loss'))}, acc {_p(c.get('acc'))})"
            cells.append(cell)
        own_row = rows.get(f"main|{ct}|0|{method}|{k}", {})
        wiki = value_cell(own_row, "wiki_ppl", 2)
        lines.append(f"| {ct} ({' '.join(map(str, own_row.get('skipped', [])))})"
                     f" | " + " | ".join(cells) + f" | {wiki} |")
    return "\n".join(lines)


def folds_table(rows, task, methods, k):
    """Per method, the k-block metrics over calibration folds: mean and min..max."""
    lines = ["| method | folds | skipped per fold | held-out loss | accuracy | Wikipedia ppl |", "|---|---|---|---|---|---|"]
    for method in methods:
        rs = sorted((r for r in rows.values() if r["kind"] == "main" and r["calib"] == task
                     and r["method"] == method and r["k"] == k), key=lambda r: r["fold"])
        if not rs:
            continue
        cells = []
        for m, d in (("eval_loss", 3), ("acc", 3), ("wiki_ppl", 2)):
            v = [r[m] for r in rs if m in r]
            cells.append(f"{sum(v) / len(v):.{d}f} ({min(v):.{d}f}..{max(v):.{d}f})" if v else "-")
        skips = "; ".join(" ".join(map(str, r["skipped"])) for r in rs)
        lines.append(f"| {LABELS.get(method, method)} | {len(rs)} | {skips} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_table(rows, paired, task, methods, ks):
    """Held-out loss and accuracy per method and k (fold 0); ``*`` marks a value that differs from Hopscotch's
    at the same k (paired test, p < 0.05); the intervals are in the per-k tables."""
    lines = ["| method | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for method in methods:
        cells = []
        for k in ks:
            key = f"main|{task}|0|{method}|{k}"
            r = rows.get(key)
            if not (r and "acc" in r):
                cells.append("-")
                continue
            ref = hop_ref(rows, task, 0, k)
            c = paired(ref, key) if ref and ref != key else {}

            def mark(m):
                return "*" if c.get(m) and c[m]["p_value"] < 0.05 else ""

            cells.append(f"{r['eval_loss']:.3f}{mark('eval_loss')} / {r['acc']:.3f}{mark('acc')}")
        if any(c != "-" for c in cells):
            lines.append(f"| {LABELS.get(method, method)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def study_markdown(rows, paired, tasks, ks, methods, k_seeds, meta=None, model="SmolLM2-135M-Instruct") -> str:
    """The whole report as markdown (sections for what is finished)."""
    parts = [f"# Quality study ({model})", "",
             "Made by `python experiments/quality_study.py --report` from the rows finished so far. Intervals: 95% "
             "percentile bootstrap over evaluation items (Wikipedia: over 256-token blocks). p: paired test on the "
             "same items (paired bootstrap for losses, exact McNemar for accuracy)."]
    if meta:
        parts.append("Machine: " + ", ".join(f"{k} {v}" for k, v in meta.items() if v))
    for task in tasks:
        if any(r["calib"] == task and r["k"] == k_seeds and r["fold"] == 0 for r in rows.values()):
            parts += ["", f"## {task}, k = {k_seeds} (fold 0)", "", k_table(rows, paired, task, methods, k_seeds)]
    for method in ("hopscotch", "hopscotch-fast"):
        if any(r["kind"] == "transfer" and r["method"] == method for r in rows.values()):
            parts += ["", f"## Transfer at k = {k_seeds}: {method}'s plans on the other tasks", "",
                      transfer_table(rows, paired, tasks, method, k_seeds)]
    for task in tasks:
        if any(r["calib"] == task and r["fold"] > 0 for r in rows.values()):
            parts += ["", f"## {task}, k = {k_seeds}, over calibration folds", "",
                      folds_table(rows, task, methods, k_seeds)]
    for task in tasks:
        if any(r["calib"] == task and r["kind"] == "main" and r["k"] not in (0, k_seeds) for r in rows.values()):
            parts += ["", f"## {task}: held-out loss / accuracy by k (fold 0)", "",
                      "`*`: differs from Hopscotch's at the same k (paired test, p < 0.05; the fast search's "
                      "where the faithful one was not run). Intervals and p-values: the per-k tables below.", "",
                      sweep_table(rows, paired, task, methods, ks)]
            for k in ks:
                if k != k_seeds and any(r["calib"] == task and r["kind"] == "main" and r["k"] == k and r["fold"] == 0
                                        for r in rows.values()):
                    parts += ["", f"### {task}, k = {k} (fold 0)", "", k_table(rows, paired, task, methods, k)]
    return "\n".join(parts) + "\n"


def plot_study(rows, out, tasks, methods, k_seeds, calibration, model="SmolLM2-135M-Instruct", n_layers=30):
    """study_<task>.png (each metric against k, with intervals) and study_transfer.png (accuracy change of each
    plan on each task) under ``out``, from the study's rows."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots")
        return
    for task in tasks:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        base = rows.get(f"original|{task}")
        for ax, m, label in zip(axes, ("eval_loss", "acc", "wiki_ppl"),
                                ("held-out loss (NLL of the original's answers)", "accuracy (0-shot, rc)",
                                 "Wikipedia perplexity")):
            for j, method in enumerate(methods):
                pts = sorted((r["k"], r[m], r["ci"][m]["low"], r["ci"][m]["high"]) for r in rows.values()
                             if r["kind"] == "main" and r["calib"] == task and r["method"] == method
                             and r["fold"] == 0 and m in r)
                if base is not None and m in base:
                    pts = [(0, base[m], base["ci"][m]["low"], base["ci"][m]["high"])] + pts
                if not pts:
                    continue
                x = [p[0] + 0.06 * (j - len(methods) / 2) for p in pts]
                y = [p[1] for p in pts]
                err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
                ax.errorbar(x, y, yerr=err, marker="o", capsize=2, label=method)
            ax.set_xlabel(f"blocks skipped (of {n_layers})")
            ax.set_title(label, fontsize=10)
            ax.grid(alpha=0.3)
            if m == "wiki_ppl":
                ax.set_yscale("log")
        if axes[0].get_legend_handles_labels()[0]:
            axes[0].legend(fontsize=8)
        fig.suptitle(f"{model} calibrated on {task} ({calibration} items); "
                     "95% bootstrap intervals over evaluation items", fontsize=11)
        fig.tight_layout()
        fig.savefig(out / f"study_{task}.png", dpi=100)
        plt.close(fig)
    # transfer: accuracy change vs the original, calibrated on rows' task, evaluated on columns' task (none without
    # transfer rows, as with --no-transfer: the diagonal alone would pose as a transfer matrix)
    if not any(r["kind"] == "transfer" for r in rows.values()):
        return
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3.4), squeeze=False)
    for ax, method in zip(axes[0], methods):
        grid = [[math.nan] * len(tasks) for _ in tasks]
        for i, ct in enumerate(tasks):
            for j, et in enumerate(tasks):
                key = (f"main|{ct}|0|{method}|{k_seeds}" if ct == et
                       else f"transfer|{ct}|{method}|{k_seeds}|{et}")
                r, base = rows.get(key), rows.get(f"original|{et}")
                if r and base and "acc" in r:
                    grid[i][j] = r["acc"] - base["acc"]
        im = ax.imshow(grid, cmap="RdBu", vmin=-0.2, vmax=0.2)
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, fontsize=7)
        ax.set_yticks(range(len(tasks)), tasks, fontsize=7)
        ax.set_title(method, fontsize=9)
        for i in range(len(tasks)):
            for j in range(len(tasks)):
                if not math.isnan(grid[i][j]):
                    ax.text(j, i, f"{grid[i][j]:+.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.suptitle(f"k={k_seeds}: accuracy change vs the original (rows: calibrated on, columns: evaluated on)",
                 fontsize=10)
    fig.savefig(out / "study_transfer.png", dpi=100)
    plt.close(fig)
    print(f"wrote plots to {out}")
