"""`maxwhisper verify --plot PATH`: every layer's error against float64, MAX's beside PyTorch's in the
same dtype, on a log scale, with the derived rule's bound and the first failing layer marked."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from maxwhisper.harness.compare import Comparison

FIGURES = (("norm", "RMS error / RMS reference"), ("max", "max element error / scale"))


def plot_errors(panels: Mapping[str, list[Comparison]], path: str | Path, title: str = "") -> Path:
    """Two rows per dtype (`panels`: dtype -> comparisons with a verdict, the same layers in each): the
    RMS figure, then the max element figure."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    # One row per (dtype, figure), stacked: 110 layers side by side per row stay legible, and the
    # dtypes line up layer under layer.
    n = max(map(len, panels.values()))
    fig, axes = plt.subplots(len(FIGURES) * len(panels), 1, figsize=(max(9, 0.16 * n), 3.2 * len(FIGURES) * len(panels)),
                             squeeze=False, sharex=True)
    rows = []
    for k, (dtype, comparisons) in enumerate(panels.items()):
        rows = [c for c in comparisons if c.verdict]
        xs = range(len(rows))
        bad = next((i for i, c in enumerate(rows) if not c.passed), None)
        for j, (fig_name, label) in enumerate(FIGURES):
            ax = axes[k * len(FIGURES) + j][0]
            ax.semilogy(xs, [getattr(c.verdict.max_errors, fig_name) for c in rows], "o-", ms=3, label="MAX")
            ax.semilogy(xs, [getattr(c.verdict.yardstick, fig_name) for c in rows], "s-", ms=3,
                        label=f"PyTorch {dtype}")
            ax.semilogy(xs, [c.verdict.bounds[fig_name] for c in rows], "--", color="gray", label="bound")
            if bad is not None:
                ax.axvline(bad, color="red", lw=1.2, label=f"first failure: {rows[bad].layer}")
            ax.set_ylabel(label, fontsize=8)
            ax.set_title(f"{dtype}: {fig_name}", fontsize=9)
            ax.legend(fontsize=7, loc="upper left")
            ax.grid(True, which="major", alpha=0.3)
    axes[-1][0].set_xticks(list(range(len(rows))), [c.layer.removeprefix("encoder.") for c in rows], rotation=90,
                           fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
