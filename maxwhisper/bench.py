"""Benchmark reporting: MAX / PyTorch ratios from one run, as a table, JSON and a PNG chart."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def machine() -> dict:
    from importlib.metadata import version

    import torch

    cpu = ""
    if Path("/proc/cpuinfo").exists():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    return dict(cpu=cpu, cores=os.cpu_count(), torch=torch.__version__, torch_threads=torch.get_num_threads(),
                max=version("max"), python=platform.python_version())


def ratio_rows(results: list[dict]) -> list[dict]:
    """One row per group that has both a MAX and a PyTorch time: ratio < 1 means MAX is faster."""
    groups: dict[str, dict[str, dict]] = {}
    for r in results:
        groups.setdefault(r["group"], {})[r["impl"]] = r
    rows = []
    for group, impls in groups.items():
        if "max" not in impls or "torch" not in impls:
            continue
        m, t = impls["max"], impls["torch"]
        row = dict(group=group, max_s=m["median_s"], torch_s=t["median_s"], ratio=m["median_s"] / t["median_s"],
                   max_gflops=m["gflops"], torch_gflops=t["gflops"],
                   peers={k: v["median_s"] for k, v in impls.items() if k not in ("max", "torch")})
        line = f"{group:32s} MAX {1e3 * row['max_s']:9.2f} ms  PyTorch {1e3 * row['torch_s']:9.2f} ms  ratio {row['ratio']:.3f}"
        if m["gflops"]:
            line += f"  MAX {m['gflops']:.0f} GFLOP/s  PyTorch {t['gflops']:.0f} GFLOP/s"
        for k, v in row["peers"].items():
            line += f"  {k} {1e3 * v:.2f} ms"
        row["line"] = line
        rows.append(row)
    return rows


def write_report(results: list[dict], rows: list[dict], out_dir: str | os.PathLike) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "bench.json"]
    paths[0].write_text(json.dumps(dict(machine=machine(), results=results,
                                        ratios=[{k: v for k, v in r.items() if k != "line"} for r in rows]),
                                   indent=1) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return paths  # the chart needs matplotlib (pip install '.[bench]')
    layers = [r for r in rows if r["group"].startswith("layer:")]
    batch = sorted((r for r in rows if ":batch" in r["group"] and "tiny.en" in r["group"]),
                   key=lambda r: int(r["group"].rsplit("batch", 1)[1]))
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [r["group"].removeprefix("layer:") for r in layers]
    xs = range(len(layers))
    a.bar([x - 0.2 for x in xs], [1e3 * r["max_s"] for r in layers], 0.4, label="MAX")
    a.bar([x + 0.2 for x in xs], [1e3 * r["torch_s"] for r in layers], 0.4, label="PyTorch")
    a.set_xticks(list(xs), names, rotation=30)
    a.set_ylabel("median ms (tiny.en dims, 1500 frames)")
    a.set_title("per layer")
    a.legend()
    sizes = [int(r["group"].rsplit("batch", 1)[1]) for r in batch]
    b.plot(sizes, [1e3 * r["max_s"] for r in batch], "o-", label="MAX")
    b.plot(sizes, [1e3 * r["torch_s"] for r in batch], "s-", label="PyTorch")
    b.set_xlabel("batch")
    b.set_ylabel("median ms")
    b.set_title("tiny.en encoder vs batch size")
    b.legend()
    fig.tight_layout()
    fig.savefig(out / "bench.png", dpi=100)
    paths.append(out / "bench.png")
    return paths


def check(result_path: str | os.PathLike, baseline_path: str | os.PathLike, slack: float = 0.25) -> list[str]:
    """Groups whose MAX / PyTorch ratio regressed more than `slack` over the stored baseline.

    Ratios, not seconds: both sides ran in the same run on the same machine, so machine speed cancels.
    """
    got = {r["group"]: r["ratio"] for r in json.loads(Path(result_path).read_text())["ratios"]}
    base = {r["group"]: r["ratio"] for r in json.loads(Path(baseline_path).read_text())["ratios"]}
    missing = [g for g in base if g not in got]
    if missing:
        raise ValueError(f"{result_path}: no result for baseline group(s) {missing}")
    return [f"{g}: ratio {got[g]:.3f} > {1 + slack:.2f} x baseline {base[g]:.3f}"
            for g in base if got[g] > (1 + slack) * base[g]]


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m maxwhisper.bench",
                                description="fail when MAX / PyTorch ratios regress over a baseline")
    p.add_argument("command", choices=["check"])
    p.add_argument("result", help="bench.json written by pytest --benchmark-only --bench-out DIR")
    p.add_argument("baseline", help="the stored baseline bench.json")
    p.add_argument("--slack", type=float, default=0.25)
    args = p.parse_args(argv)
    bad = check(args.result, args.baseline, args.slack)
    for line in bad:
        print(f"REGRESSION {line}")
    print("ratio check: " + ("FAILED" if bad else "ok"))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
