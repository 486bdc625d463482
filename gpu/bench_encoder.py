"""The tiny.en encoder on one device: PyTorch float32 (IEEE), PyTorch TF32 and PyTorch float16 (openai-whisper's
fp16 path: float32 weights, 16-bit input, SDPA), then MAX in every precision of the table; batch 1, 4
and 16; host log-mel in, host features out on both sides (the same work, and each row's features are
compared with PyTorch IEEE's at that batch, so a fast wrong row shows).

  python gpu/bench_encoder.py --device gpu --json $OUT/bench-gpu.json

PyTorch's rows run before MAX executes anything: MAX's worker threads slow PyTorch in the same process.
Each row: 2 warm-up calls, then calls until 5 and 0.5 s (at most 30, or 3 once past 3 s); the JSON is
rewritten after every row. Timings, not assertions: a ratio is read from one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def timed(fn) -> dict:
    for _ in range(2):
        out = fn()
    times = []
    t_start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        spent = time.perf_counter() - t_start
        if len(times) >= 30 or (len(times) >= 5 and spent >= 0.5) or (len(times) >= 3 and spent >= 3.0):
            break
    return dict(median_ms=1e3 * float(np.median(times)), min_ms=1e3 * min(times), calls=len(times), out=out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="gpu")
    ap.add_argument("--json", required=True)
    ap.add_argument("--batches", default="1,4,16", help="comma-separated (the CPU rehearsal: 1)")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]

    import torch

    from maxwhisper.device import parse_device
    from maxwhisper.harness.inputs import random_mel
    from reference.modules import reference_encoder
    from reference.yardstick import ieee
    from maxwhisper.precision import PRECISIONS
    from maxwhisper.checkpoints import load_weights

    dev = parse_device(args.device)
    dims, sd = load_weights("tiny.en")
    mels = {b: random_mel(np.random.default_rng(b), dims, b) for b in batches}
    import whisper.model as wm

    doc = dict(device=args.device, torch=torch.__version__, model="tiny.en", rows=[],
               sdpa=bool(wm.SDPA_AVAILABLE and wm.MultiHeadAttention.use_sdpa),
               gpu=torch.cuda.get_device_name(dev.index) if dev.kind == "gpu" else None)
    truth: dict[int, np.ndarray] = {}

    def record(impl: str, batch: int, r: dict) -> None:
        out = r.pop("out")
        if impl == "torch-float32-ieee":
            truth[batch] = out
        diff = np.abs(out - truth[batch]) if batch in truth else None
        doc["rows"].append(dict(impl=impl, batch=batch, **{k: round(v, 3) if isinstance(v, float) else v
                                                           for k, v in r.items()},
                                max_abs_vs_torch_ieee=None if diff is None else float(diff.max()),
                                finite=bool(np.isfinite(out).all())))
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"{impl:24s} batch {batch:2d}: {r['median_ms']:9.2f} ms ({r['calls']} calls)", flush=True)

    module = reference_encoder(dims, sd, torch.float32).to(dev.torch)
    modes = [("torch-float32-ieee", "ieee", torch.float32), ("torch-tf32", "tf32", torch.float32),
             ("torch-float16", "ieee", torch.float16)]
    with torch.no_grad():
        for impl, fp32, dtype in modes:
            if fp32 == "tf32" and dev.kind != "gpu":
                continue  # TF32 is a tensor-core mode: no such row on the CPU
            ieee()
            if fp32 == "tf32":
                torch.backends.cuda.matmul.fp32_precision = "tf32"
                torch.backends.cudnn.conv.fp32_precision = "tf32"
            for b in batches:
                mel = torch.from_numpy(mels[b])
                record(impl, b, timed(lambda: module(mel.to(dev.torch, dtype)).float().cpu().numpy()))
    ieee()
    del module

    from maxwhisper import MaxWhisper

    for name in PRECISIONS:
        model = MaxWhisper(dims, sd, args.device, name)
        model.compile()
        for b in batches:
            record(f"max-{name}", b, timed(lambda: model.encode(mels[b])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
