"""`maxwhisper verify --plot PATH`: every layer's error against float64, MAX's beside PyTorch's in the
same dtype, on a log scale, with the derived rule's bound and the first failing layer marked."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from maxwhisper.harness.compare import Comparison

FIGURES = (("norm", "RMS error / RMS reference"), ("max", "max element error / scale"))


def plot_errors(panels: Mapping[str, list[Comparison]], path: str | Path, title: str = "") -> Path:
    """One column per dtype (`panels`: dtype -> comparisons with a verdict), one row per figure."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(FIGURES), len(panels), figsize=(max(9, 0.22 * max(map(len, panels.values()))) *
                                                                  len(panels), 7.5), squeeze=False, sharex="col")
    for col, (dtype, rows) in enumerate(panels.items()):
        rows = [c for c in rows if c.verdict]
        xs = range(len(rows))
        bad = next((i for i, c in enumerate(rows) if not c.passed), None)
        for row, (fig_name, label) in enumerate(FIGURES):
            ax = axes[row][col]
            ax.semilogy(xs, [getattr(c.verdict.max_errors, fig_name) for c in rows], "o-", ms=3, label="MAX")
            ax.semilogy(xs, [getattr(c.verdict.yardstick, fig_name) for c in rows], "s-", ms=3,
                        label=f"PyTorch {dtype}")
            ax.semilogy(xs, [c.verdict.bounds[fig_name] for c in rows], "--", color="gray", label="bound")
            if bad is not None:
                ax.axvline(bad, color="red", lw=1.2, label=f"first failure: {rows[bad].layer}")
            ax.set_ylabel(label)
            ax.set_title(f"{dtype}: {fig_name}" if row == 0 else "")
            ax.legend(fontsize=7, loc="upper left")
            ax.grid(True, which="major", alpha=0.3)
        axes[-1][col].set_xticks(list(xs), [c.layer.removeprefix("encoder.") for c in rows], rotation=90, fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
