"""Plots shared by the tasks (matplotlib with the Agg backend, imported only when a plot is drawn)."""

from __future__ import annotations

from pathlib import Path


def plot_history(path: Path, history: list[dict], keys: tuple[str, ...], best_epoch: int, title: str) -> None:
    """Train and validation curves of ``keys`` per epoch (one panel each), the kept epoch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
    e = [h["epoch"] for h in history]
    for ax, key in zip(axes[0], keys, strict=True):
        for split, ls in (("train", "-"), ("val", "--")):
            if f"{split}_{key}" in history[0]:
                ax.plot(e, [h[f"{split}_{key}"] for h in history], ls, marker="o", ms=3,
                        label="validation" if split == "val" else split)
        ax.axvline(best_epoch, color="k", lw=0.5, ls=":")
        ax.set(xlabel="epoch", title=key)
        if key != "auc":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_efficiency(path: Path, result: dict, xlabel: str = "signal amplitude") -> None:
    """Efficiency vs amplitude of a trigger result (``efficiency``, ``a50``, ``working_point``,
    ``fpr_measured``; optionally ``matched_filter`` with its own curve and A50)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    cur = result["efficiency"]
    ax.errorbar(cur["centre"], cur["efficiency"], yerr=cur["error"], fmt="o-", ms=3,
                label=f"VCAE, A50 = {result['a50']:.4g}")
    if "matched_filter" in result:
        mf = result["matched_filter"]
        ax.errorbar(mf["efficiency"]["centre"], mf["efficiency"]["efficiency"], yerr=mf["efficiency"]["error"],
                    fmt="s--", ms=3, label=f"matched filter, A50 = {mf['a50']:.4g}")
    ax.axhline(0.5, color="k", lw=0.5, ls=":")
    ax.set(xscale="log", xlabel=xlabel, ylabel="efficiency", ylim=(-0.02, 1.02),
           title=f"efficiency at {result['working_point']} (measured FPR {result['fpr_measured']:.4f})")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

