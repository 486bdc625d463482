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


def _compile_lines(rows):
    return [f"{r['graph']:12s} cold {r['cold_s']:6.1f} s  warm {r['warm_s']:5.1f} s" for r in rows]


def _pipeline_lines(rows):
    base = next((r["seconds"] for r in rows if r["impl"] == "torch" and r["batch"] == 1), None)
    lines = []
    for r in rows:
        speedup = f"{base / r['seconds']:5.2f}x" if base else "   - "
        lines.append(f"{r['impl']:15s} batch {r['batch']:2d}  {r['files']:3d} files {r['audio_s']:6.0f} s audio "
                     f"{r['seconds']:7.1f} s  RTF {r['rtf']:.3f}  {speedup}  {r['spent']}")
    return lines


def _step_lines(rows):
    return [f"decoder step {r['impl']:5s} batch {r['batch']}: {r['median_ms']:.2f} ms (cache {r['cache']})" for r in rows]


def _size_lines(rows):
    return [f"{r['size']:15s} {r['what']:7s} {r['impl']:12s} batch {r['batch']:2d}: {r['median_ms']:9.1f} ms  "
            f"{1e3 * r['gflop'] / r['median_ms']:6.1f} GFLOP/s" for r in rows]


def _serve_lines(rows):
    return [f"{r['server']:14s} {r['dtype']:8s} batch {r['batch']:2d} clients {r['clients']:2d}: {r['files']:3d} files "
            f"{r['seconds']:7.1f} s  {r['requests_per_s']:.2f} requests/s  p50 {r['p50_s']:.2f} s  p95 {r['p95_s']:.2f} s"
            for r in rows]


# Each kind of untimed row the benchmarks record (memory_record), its section title and its lines.
SECTIONS = {
    "rss": ("peak RSS per configuration (each in a fresh process)", memory_lines),
    "compile": ("compile per graph (empty MAX cache, then warm)", _compile_lines),
    "pipeline": ("end to end (each in a fresh process; ratio: openai-whisper's time / this)", _pipeline_lines),
    "decoder-step": ("decoder step (each in a fresh process)", _step_lines),
    "true-size-encoder": ("true-size encoder (random weights at the true dims, each in a fresh process)", _size_lines),
    "true-size-step": ("true-size decoder step after 32 cached tokens (each in a fresh process)", _size_lines),
    "serve-load": ("maxwhisper serve under load (server and clients in fresh processes)", _serve_lines),
}


def rows_by_kind(rows: list[dict]) -> dict[str, list[dict]]:
    """bench.json's lists of untimed rows: "memory" (peak RSS), "compile", "pipeline", "decoder_step", ..."""
    key = lambda k: "memory" if k == "rss" else k.replace("-", "_")  # noqa: E731
    return {key(k): [r for r in rows if (r.get("kind") or "rss") == k] for k in SECTIONS}


def summary_sections(ratios: list[dict], rows: list[dict]) -> list[tuple[str, list[str]]]:
    """The end-of-run report: the ratio table, then one section per kind of untimed row, in SECTIONS' order.

    A kind SECTIONS does not know is a ValueError naming it, raised here and tested, rather than a
    KeyError at the end of a 30-minute run.
    """
    kinds: dict[str, list[dict]] = {}
    for r in rows:
        kinds.setdefault(r.get("kind") or "rss", []).append(r)
    unknown = sorted(set(kinds) - set(SECTIONS))
    if unknown:
        raise ValueError(f"benchmark rows of unknown kind {unknown}: add them to report.SECTIONS")
    sections = [("MAX / PyTorch (median time ratio, same run)", [r["line"] for r in ratios])]
    return sections + [(SECTIONS[k][0], SECTIONS[k][1](kinds[k])) for k in SECTIONS if k in kinds]


def write_report(results: list[dict], rows: list[dict], out_dir: str | os.PathLike,
                 memory: list[dict] = ()) -> list[Path]:
    """bench.json (machine, every result, the ratio rows, and the untimed rows by kind) and bench.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "bench.json"]
    paths[0].write_text(json.dumps(dict(machine=machine(), results=results,
                                        ratios=[{k: v for k, v in r.items() if k != "line"} for r in rows],
                                        **rows_by_kind(memory)),
                                   indent=1) + "\n")
    chart = write_chart(rows, out / "bench.png")
    return paths + ([chart] if chart else [])
