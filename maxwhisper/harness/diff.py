"""The gate for encoder changes: this tree's MAX errors, layer by layer, against a saved baseline.

`save` measures every traced layer of the MAX encoder against the float64 reference on the golden
fixture's mel and on seeded random mels, with the yardsticks' errors on the same input: PyTorch
float32's and the sequential-order float32 sum's (`reference.sequential`). `diff` measures all three
again, on this machine, and names the first layer whose error grew more than `factor` times. The
sequential order's adds are the same on every CPU, but its softmax's exp is PyTorch's, which the x86
build hands to MKL's vector math (`at::vml`), with code paths per CPU (the likely cause, not reproduced
on a Zen 4): on an Intel Xeon the order's max figure at golden encoder.blocks.2.mlp.1 was 0.78x the Zen 4
baseline's.

Growth is counted in the yardstick's units, not in absolute error: a layer's ratio is MAX's error
over the larger of the two yardsticks' (as `verify` judges), each measured on the machine at hand.
MAX's float32 kernels sum in another order on another CPU (AVX2 against AVX-512), which moves one
element's error several times (issue 31: 3.6x on a Zen 3 at `random-1 encoder.blocks.3.mlp.2`, a row
where PyTorch itself erred 6x MAX's Zen 4 error) but not past a correctly rounded order's own error.
So growth is measured from the larger of the baseline's ratio and 1 (one unit: what any correctly
rounded order may err): a layer regresses when its ratio passes `factor` times that. Error figures,
not activations, are kept: a change that moves the output without making it less accurate is not a
regression. `maxwhisper verify --save-trace PATH` writes a baseline; `maxwhisper diff [BASELINE]`
compares (default: `BASELINE`, checked in).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maxwhisper.harness import fixture, golden, producers as P
from maxwhisper.harness.inputs import random_mel
from maxwhisper.harness.judge import errors
from maxwhisper.harness.registry import check_of, input_of
from maxwhisper.model import MaxWhisper

BASELINE = fixture.repo_file("fixtures/encoder_errors_baseline.json")
FORMAT = 2
RANDOM_SEEDS = (0, 1)
# A layer regresses when a figure's ratio grows past this factor over max(baseline ratio, 1). The
# near-threshold mutants (tests/mutants.py) reach 12-21 units at their layer (LayerNorm eps 1e-6).
FACTOR = 2.0
FIGURES = ("norm", "quantile", "max")
# a unit below float32's rounding of the value itself (half an ulp, relative) cannot shrink further
UNIT_FLOOR = 2.0**-24


def figures(actual: P.Trace, reference: P.Trace, yardstick: P.Trace, order: P.Trace | None, dims) -> dict:
    """{layer: {"max", "torch"[, "order"]: error figures against float64}}: MAX's (`actual`), PyTorch's
    in the same precision (`yardstick`) and, where given, the sequential order's (`order`), on one input."""
    checks = check_of(dims, actual.ran.dtype)
    out = {}
    for c in P.judge(actual, reference, yardstick, checks, input_of(dims)):
        if c.verdict is None:
            raise ValueError(c.report())
        out[c.layer] = {"max": c.verdict.max_errors.as_dict(), "torch": c.verdict.yardstick.as_dict()}
    if order is not None:
        for layer, arrays in order.arrays.items():
            if layer in out:
                src = input_of(dims)(layer)  # as compare_traces: the reference's input, for an element scale
                out[layer]["order"] = errors(arrays, reference.arrays[layer], checks(layer).rule,
                                             reference.arrays[src] if src else None).as_dict()
    return out


def _figures(model: MaxWhisper, mel: np.ndarray) -> dict:
    d, sd = model.dims, model.state_dict
    quantize = model.dtype if model.form.quantized else None
    order = P.order_encoder(d, sd, mel, production=False) if model.dtype == "float32" else None
    return figures(P.max_encoder(model, mel, production=False),
                   P.torch_encoder(d, sd, mel, production=False, quantize=quantize),
                   P.torch_encoder(d, sd, mel, model.dtype, model.device, production=False), order, d)


def mels(dims) -> dict[str, np.ndarray]:
    """The gate's inputs: the golden fixture's mel and seeded random mels."""
    out = {"golden": golden.load_fixture().mel}
    out.update({f"random-{s}": random_mel(np.random.default_rng(s), dims, 1) for s in RANDOM_SEEDS})
    return out


def measure(model: MaxWhisper) -> dict:
    """{input name: figures} for the gate's mels, all measured on this machine."""
    return {name: _figures(model, mel) for name, mel in mels(model.dims).items()}


def save(model: MaxWhisper, path: str | Path, model_name: str) -> dict:
    from maxwhisper.bench.machine import cpu
    from maxwhisper.checkpoints import weights_hash

    data = {"format": FORMAT, "model": model_name, "weights_sha256": weights_hash(model.state_dict),
            "measured_on": cpu(), "inputs": measure(model)}
    Path(path).write_text(json.dumps(data, indent=1) + "\n")
    return data


@dataclass
class Row:
    input: str
    layer: str
    base_ratio: float      # baseline MAX/unit rms ratio
    ratio: float           # this tree's, on this machine
    growth: dict           # figure -> this ratio / max(the baseline's, 1)
    regressed: bool


def load(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the baseline ({e}); write one with "
                         "`maxwhisper verify --save-trace PATH`") from None
    if data.get("format") != FORMAT or "inputs" not in data:
        raise ValueError(f"{path}: not a baseline of format {FORMAT}; write one with `maxwhisper verify --save-trace`")
    return data


def ratios(entry: dict, order: dict | None = None) -> dict:
    """figure -> MAX's error in units of the larger yardstick: PyTorch float32's or the sequential
    order's (`entry`'s, both from the machine it was measured on; else `order`'s: the baseline's)."""
    order = entry.get("order", order)
    return {f: entry["max"][f] / max(entry["torch"][f], order[f], UNIT_FLOOR) for f in FIGURES}


def regressions(baseline: dict, current: dict, factor: float = FACTOR) -> list[Row]:
    """One row per (input, layer) of the baseline; a layer missing now is a regression."""
    rows = []
    for name, layers in baseline["inputs"].items():
        for layer, base in layers.items():
            now = current.get(name, {}).get(layer)
            if now is None:
                rows.append(Row(name, layer, float("nan"), float("nan"), {}, True))
                continue
            b, n = ratios(base), ratios(now, base["order"])
            growth = {f: n[f] / max(b[f], 1.0) for f in FIGURES}
            rows.append(Row(name, layer, b["norm"], n["norm"], growth, not all(g <= factor for g in growth.values())))
    return rows


def format_rows(rows: list[Row]) -> str:
    lines = [f"{'input':10s} {'layer':32s} {'MAX/unit rms: base':>19s} {'now':>6s} "
             f"{'growth rms':>11s} {'q99':>6s} {'max':>6s}"]
    lines += [f"{r.input:10s} {r.layer:32s} {r.base_ratio:19.2f} {r.ratio:6.2f} "
              + " ".join(f"{r.growth.get(f, float('nan')):{w}.2f}" for f, w in zip(FIGURES, (11, 6, 6)))
              + ("  REGRESSED" if r.regressed else "") for r in rows]
    return "\n".join(lines)
