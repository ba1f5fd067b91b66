"""Plots of benchmark rows (matplotlib, optional: without it nothing is drawn and None is returned)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_e2e"]


def plot_e2e(rows: list[dict], path: Path, title: str = "") -> Path | None:
    """Decode tokens/s and prefill time per provider and k, one panel per (phase, batch, context)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = sorted({(r["phase"], r["batch"], r.get("context", 0)) for r in rows})
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    ks = sorted({r["k"] for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    width = 0.8 / max(1, len(providers))
    for ax, (phase, batch, ctx) in zip(axes[0], panels):
        for j, prov in enumerate(providers):
            vals = {r["k"]: r["tokens_per_s"] for r in rows
                    if (r["phase"], r["batch"], r.get("context", 0), r["provider"]) == (phase, batch, ctx, prov)}
            if prov == "hf":  # hf skips nothing: draw it at every k as the reference
                vals = {k: next(iter(vals.values())) for k in ks} if vals else {}
            xs = [i + j * width for i, k in enumerate(ks) if k in vals]
            ax.bar(xs, [vals[k] for k in ks if k in vals], width, label=prov)
        ax.set_xticks([i + width * (len(providers) - 1) / 2 for i in range(len(ks))], [str(k) for k in ks])
        ax.set_xlabel("attention blocks skipped")
        ax.set_ylabel("tokens / s")
        ax.set_title(f"{phase}, batch {batch}, context {ctx}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
