"""The gate for encoder changes: this tree's MAX errors, layer by layer, against a saved baseline.

`save` measures every traced layer of the MAX encoder against the float64 reference (and PyTorch
float32's error alongside, for the ratio) on the golden fixture's mel and on seeded random mels, and
`diff` measures the same again and names the first layer whose error grew more than `factor` times.
Error figures, not activations, are kept: the gate is about accuracy, and a change that moves the
output without making it less accurate is not a regression. `maxwhisper verify --save-trace PATH`
writes a baseline; `maxwhisper diff [BASELINE]` compares (default: `BASELINE`, checked in).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maxwhisper.harness import fixture, golden, producers as P
from maxwhisper.harness.inputs import random_mel
from maxwhisper.harness.registry import check_of, input_of
from maxwhisper.model import MaxWhisper

BASELINE = fixture.repo_file("fixtures/encoder_errors_baseline.json")
FORMAT = 1
RANDOM_SEEDS = (0, 1)
# A layer regresses when its error (rms or max) grows past this factor. On one machine MAX's figures
# repeat exactly; across CPUs rounding moves them (not measured here), which the factor leaves room
# for, while the near-threshold mutants (tests/mutants.py) move their layer's error 20x and more.
FACTOR = 2.0


def measure(model: MaxWhisper) -> dict:
    """{input name: {layer: {"max": figures, "torch": figures}}} for the golden mel and random mels."""
    mels = {"golden": golden.load_fixture().mel}
    mels.update({f"random-{s}": random_mel(np.random.default_rng(s), model.dims, 1) for s in RANDOM_SEEDS})
    d, sd = model.dims, model.state_dict
    quantize = model.dtype if model.form.quantized else None
    out = {}
    for name, mel in mels.items():
        rows = P.judge(P.max_encoder(model, mel, production=False), P.torch_encoder(d, sd, mel, production=False, quantize=quantize),
                       P.torch_encoder(d, sd, mel, model.dtype, model.device, production=False),
                       check_of(d, model.dtype), input_of(d))
        broken = [c for c in rows if c.verdict is None]
        if broken:
            raise ValueError(f"{name}: {broken[0].report()}")
        out[name] = {c.layer: {"max": c.verdict.max_errors.as_dict(), "torch": c.verdict.yardstick.as_dict()}
                     for c in rows}
    return out


def save(model: MaxWhisper, path: str | Path, model_name: str) -> dict:
    from maxwhisper.weights import weights_hash

    data = {"format": FORMAT, "model": model_name, "weights_sha256": weights_hash(model.state_dict),
            "inputs": measure(model)}
    Path(path).write_text(json.dumps(data, indent=1) + "\n")
    return data


@dataclass
class Row:
    input: str
    layer: str
    base_ratio: float      # baseline MAX/torch rms ratio
    ratio: float           # this tree's
    growth: dict           # figure -> this tree's MAX error / the baseline's
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


def regressions(baseline: dict, current: dict, factor: float = FACTOR) -> list[Row]:
    """One row per (input, layer) of the baseline; a layer missing now is a regression."""
    rows = []
    for name, layers in baseline["inputs"].items():
        for layer, base in layers.items():
            now = current.get(name, {}).get(layer)
            if now is None:
                rows.append(Row(name, layer, float("nan"), float("nan"), {}, True))
                continue
            # floor: a baseline error at float32's rounding of the value itself cannot shrink further
            growth = {f: now["max"][f] / max(base["max"][f], 1e-7) for f in ("norm", "max")}
            ratio = lambda e: e["max"]["norm"] / e["torch"]["norm"] if e["torch"]["norm"] else float("inf")  # noqa: E731
            rows.append(Row(name, layer, ratio(base), ratio(now), growth,
                            not all(g <= factor for g in growth.values())))
    return rows


def format_rows(rows: list[Row]) -> str:
    lines = [f"{'input':10s} {'layer':32s} {'MAX/torch rms: base':>20s} {'now':>6s} {'growth rms':>11s} {'max':>6s}"]
    lines += [f"{r.input:10s} {r.layer:32s} {r.base_ratio:20.2f} {r.ratio:6.2f} "
              f"{r.growth.get('norm', float('nan')):11.2f} {r.growth.get('max', float('nan')):6.2f}"
              + ("  REGRESSED" if r.regressed else "") for r in rows]
    return "\n".join(lines)
