"""Compile (or load from ~/.cache/modular) some of the tiny.en model's MAX graphs and exit, so that a
process started beside this one finds them in the cache: `gpu/measure.py` runs it next to `verify`.

  python gpu/warm.py --device gpu --dtype bfloat16 decoder-trace decoder-cross
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GRAPHS = ("encoder", "encoder-trace", "decoder-cross", "decoder-trace", "decoder-step")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("graphs", nargs="+", choices=GRAPHS, help="in the order to compile them")
    ap.add_argument("--device", default="gpu")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args(argv)
    from maxwhisper import load_model

    model = load_model(device=args.device, dtype=args.dtype)
    for g in args.graphs:
        t0 = time.perf_counter()
        part, _, which = g.partition("-")
        if part == "encoder":
            model.compile(trace=which == "trace")
        else:
            model.decoder.compile({"cross": "cross", "trace": "trace", "step": "step"}[which])
        print(f"{g} ({args.dtype}, {args.device}): {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
