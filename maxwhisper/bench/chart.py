"""bench.png: per layer, the tiny.en batch curve, and model sizes (needs matplotlib: '.[bench]')."""

from __future__ import annotations

from pathlib import Path


def write_chart(rows: list[dict], path: Path) -> Path | None:
    """Three panels from the ratio rows; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    layers = [r for r in rows if r["group"].startswith("layer:")]
    batch = sorted((r for r in rows if r["group"].startswith("encoder:tiny.en:batch")),
                   key=lambda r: int(r["group"].rsplit("batch", 1)[1]))
    sizes = [r for r in rows if r["group"].startswith("encoder:size:")]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.5))
    names = [r["group"].removeprefix("layer:") for r in layers]
    xs = range(len(layers))
    a.bar([x - 0.2 for x in xs], [1e3 * r["max_s"] for r in layers], 0.4, label="MAX")
    a.bar([x + 0.2 for x in xs], [1e3 * r["torch_s"] for r in layers], 0.4, label="PyTorch")
    a.set_xticks(list(xs), names, rotation=30)
    a.set_ylabel("median ms (tiny dims, 1500 frames)")
    a.set_title("per layer")
    a.legend()
    bs = [int(r["group"].rsplit("batch", 1)[1]) for r in batch]
    b.plot(bs, [1e3 * r["max_s"] for r in batch], "o-", label="MAX")
    b.plot(bs, [1e3 * r["torch_s"] for r in batch], "s-", label="PyTorch")
    b.set_xlabel("batch")
    b.set_ylabel("median ms")
    b.set_title("tiny.en encoder vs batch size")
    b.legend()
    xs = range(len(sizes))
    c.bar([x - 0.2 for x in xs], [r["ratio"] for r in sizes], 0.4, label="MAX / PyTorch")
    c.axhline(1.0, color="gray", lw=0.8)
    c.set_xticks(list(xs), [r["group"].removeprefix("encoder:size:") for r in sizes])
    c.set_ylabel("time ratio (< 1: MAX faster)")
    c.set_title("encoder, batch 1, by model size")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


