"""Benchmark reporting: MAX / PyTorch ratios from one run, as table lines and bench.json.

Ratios, not seconds, are what this project reports and gates on: both sides run in the same process
of the same run on the same machine, so the machine's speed cancels.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from maxwhisper.bench.chart import write_chart
from maxwhisper.bench.machine import machine


def peak_gflops(results: list[dict]) -> float | None:
    """The fp32 matrix-product peak measured in this run (the best `peak:` group result), if any."""
    peaks = [r["gflops"] for r in results if r["group"].startswith("peak:") and r.get("gflops")]
    return max(peaks) if peaks else None


def ratio_rows(results: list[dict]) -> list[dict]:
    """One row per group that has both a MAX and a PyTorch time: ratio < 1 means MAX is faster.

    Next to every time with a FLOP count: GFLOP/s and its share of the peak measured in the same
    run; next to every time: how many cores the process kept busy while it ran (CPU s / wall s).
    """
    peak = peak_gflops(results)
    groups: dict[str, dict[str, dict]] = {}
    for r in results:
        groups.setdefault(r["group"], {})[r["impl"]] = r
    rows = []
    for group, impls in groups.items():
        if "max" not in impls or "torch" not in impls:
            continue
        m, t = impls["max"], impls["torch"]
        row = dict(group=group, max_s=m["median_s"], torch_s=t["median_s"], ratio=m["median_s"] / t["median_s"],
                   max_gflops=m["gflops"], torch_gflops=t["gflops"], peak_gflops=peak,
                   max_cores=m.get("cores_busy"), torch_cores=t.get("cores_busy"),
                   peers={k: v["median_s"] for k, v in impls.items() if k not in ("max", "torch")})
        line = f"{group:32s} MAX {1e3 * row['max_s']:9.2f} ms  PyTorch {1e3 * row['torch_s']:9.2f} ms  ratio {row['ratio']:.3f}"
        if m["gflops"] and not group.startswith("peak:"):
            line += f"  GFLOP/s MAX {m['gflops']:.0f} PyTorch {t['gflops']:.0f}"
            if peak:
                line += f" ({100 * m['gflops'] / peak:.0f}% / {100 * t['gflops'] / peak:.0f}% of peak {peak:.0f})"
        if row["max_cores"] and row["torch_cores"]:
            line += f"  cores busy {row['max_cores']:.2f} / {row['torch_cores']:.2f}"
        for k, v in row["peers"].items():
            line += f"  {k} {1e3 * v:.2f} ms"
        row["line"] = line
        rows.append(row)
    return rows


def memory_lines(memory: list[dict]) -> list[str]:
    return [f"{r['config']:32s} {r['impl']:6s} peak RSS {r['peak_mb']:7.0f} MB  "
            f"(+{r['peak_mb'] - r['baseline_mb']:.0f} MB over {r['baseline_mb']:.0f} MB after imports and weights)"
            for r in memory]


def write_report(results: list[dict], rows: list[dict], out_dir: str | os.PathLike,
                 memory: list[dict] = ()) -> list[Path]:
    """bench.json (machine, every result, the ratio rows, peak RSS and compile rows) and bench.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "bench.json"]
    paths[0].write_text(json.dumps(dict(machine=machine(), results=results,
                                        ratios=[{k: v for k, v in r.items() if k != "line"} for r in rows],
                                        memory=[m for m in memory if m.get("kind") in (None, "rss")],
                                        compile=[m for m in memory if m.get("kind") == "compile"],
                                        pipeline=[m for m in memory if m.get("kind") == "pipeline"],
                                        decoder_step=[m for m in memory if m.get("kind") == "decoder-step"]),
                                   indent=1) + "\n")
    chart = write_chart(rows, out / "bench.png")
    return paths + ([chart] if chart else [])
