"""Benchmark reporting: MAX / PyTorch ratios from one run, as a table, JSON and a PNG chart.

Also the pieces of the benchmark suite that are not timing: the model sizes it sweeps, the FLOP
counts behind every GFLOP/s figure, and the peak-RSS probe (`python -m maxwhisper.bench rss`), which
runs one configuration in a fresh process so its memory is its own.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

from whisper.model import ModelDimensions

# openai-whisper's published encoder sizes (the decoder fields follow the same table).
SIZES = {
    "tiny": ModelDimensions(80, 1500, 384, 6, 4, 51864, 448, 384, 6, 4),
    "base": ModelDimensions(80, 1500, 512, 8, 6, 51864, 448, 512, 8, 6),
    "small": ModelDimensions(80, 1500, 768, 12, 12, 51864, 448, 768, 12, 12),
}


def machine() -> dict:
    from importlib.metadata import version

    import torch

    cpu = ""
    if Path("/proc/cpuinfo").exists():
        info = Path("/proc/cpuinfo").read_text()
        cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                    if line.startswith("model name")), "")
        flags = next((line.split(":", 1)[1].split() for line in info.splitlines()
                      if line.startswith("flags")), [])
        cpu += " (" + ", ".join(f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags) + ")"
    return dict(cpu=cpu, cores=os.cpu_count(), torch=torch.__version__, torch_threads=torch.get_num_threads(),
                max=version("max"), python=platform.python_version())


def layer_flops(layer: str, dims: ModelDimensions, batch: int = 1, frames: int | None = None) -> float | None:
    """Multiply-adds x 2 of one layer on `frames` positions (n_audio_ctx; the stem reads 2x that).

    None for the elementwise layers (GELU, LayerNorm), whose cost is memory traffic, not FLOPs.
    """
    t, d, m = frames or dims.n_audio_ctx, dims.n_audio_state, dims.n_mels
    stem = 2 * 3 * (m * d * 2 * t + d * d * t)          # conv1 at 2t frames, conv2 (stride 2) at t
    attn = 2 * (4 * t * d * d + 2 * t * t * d)          # q, k, v, out projections; qk^T and pv
    mlp = 2 * 8 * t * d * d                              # d -> 4d -> d
    per = {"conv_stem": stem, "attention": attn, "mlp": mlp, "block": attn + mlp,
           "encoder": stem + dims.n_audio_layer * (attn + mlp)}
    return batch * per[layer] if layer in per else None


def encoder_flops(dims: ModelDimensions, batch: int = 1) -> float:
    return layer_flops("encoder", dims, batch)


def max_last(items: list, impl_of) -> list:
    """`items` with every MAX timing moved after all the others, each side in its own order.

    Once MAX has executed a graph, its runtime's worker threads keep polling (0.47 cores busy in a
    process that sleeps right after, 0.14 three seconds later), and on this 2-core machine they
    slow every later PyTorch call in that process: the tiny.en encoder took 148 ms before the first
    MAX execution and 189-197 ms after it, while MAX took ~195 ms in either order. So all the
    PyTorch (and peer) timings run before the first MAX execution.
    """
    return ([i for i in items if impl_of(i) != "max"]
            + [i for i in items if impl_of(i) == "max"])


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
                                        memory=[m for m in memory if m.get("kind") != "compile"],
                                        compile=[m for m in memory if m.get("kind") == "compile"]),
                                   indent=1) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return paths  # the chart needs matplotlib (pip install '.[bench]')
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


def random_encoder_weights(dims: ModelDimensions, seed: int = 0) -> dict:
    """An encoder state dict (openai-whisper keys) of trained-scale random weights, for the size sweep."""
    import numpy as np

    from maxwhisper.registry import SPECS, random_params

    return random_params(np.random.default_rng(seed), {
        f"encoder.{k}": v for k, v in SPECS["encoder"].param_shapes(dims).items()})


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_probe(impl: str, config: str, batch: int, device: str = "cpu") -> dict:
    """Peak RSS of loading one encoder and running it twice, in this (fresh) process.

    `config` is "tiny.en" (the embedded weights) or a size in SIZES (random weights). The baseline
    is the RSS after the imports and the numpy state dict exist; the peak high-water mark is reset
    there (Linux's clear_refs), so the peak counts what this implementation allocates on top.
    """
    import numpy as np

    if config == "tiny.en":
        from maxwhisper.weights import load_weights

        dims, sd = load_weights("tiny.en")
    elif config in SIZES:
        dims = SIZES[config]
        sd = random_encoder_weights(dims)
    else:
        raise ValueError(f"config {config!r}: expected 'tiny.en' or one of {sorted(SIZES)}")
    mel = np.random.default_rng(1).uniform(-1.5, 1.5, (batch, dims.n_mels, 2 * dims.n_audio_ctx))
    mel = mel.astype(np.float32)
    import torch  # imported by both sides (openai-whisper's dims); imported before the baseline

    torch.set_num_threads(os.cpu_count() or 1)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    baseline = _status_mb("VmRSS")
    if impl == "max":
        from maxwhisper.model import MaxWhisper

        model = MaxWhisper(dims, sd, device)
        run = lambda: model.encode(mel)
    elif impl == "torch":
        from reference.modules import reference_encoder

        enc = reference_encoder(dims, sd, torch.float32).to("cuda" if device == "gpu" else "cpu")
        run = lambda: enc(torch.from_numpy(mel).to(next(enc.parameters()).device)).cpu().numpy()
    else:
        raise ValueError(f"impl {impl!r}: expected 'max' or 'torch'")
    with torch.no_grad():
        run()
        run()
    return dict(impl=impl, config=f"{config}:batch{batch}", device=device, baseline_mb=baseline,
                peak_mb=_status_mb("VmHWM"), hwm_reset=reset)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m maxwhisper.bench",
                                description="benchmark helpers: the ratio regression gate and the peak-RSS probe")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="fail when MAX / PyTorch ratios regress over a baseline")
    c.add_argument("result", help="bench.json written by pytest --benchmark-only --bench-out DIR")
    c.add_argument("baseline", help="the stored baseline bench.json")
    c.add_argument("--slack", type=float, default=0.25)
    r = sub.add_parser("rss", help="print one configuration's peak RSS as JSON (run it in a fresh process)")
    r.add_argument("impl", choices=["max", "torch"])
    r.add_argument("config", help="tiny.en, or a size with random weights: " + ", ".join(SIZES))
    r.add_argument("--batch", type=int, default=1)
    r.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.command == "rss":
        try:
            print(json.dumps(rss_probe(args.impl, args.config, args.batch, args.device)))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    bad = check(args.result, args.baseline, args.slack)
    for line in bad:
        print(f"REGRESSION {line}")
    print("ratio check: " + ("FAILED" if bad else "ok"))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
