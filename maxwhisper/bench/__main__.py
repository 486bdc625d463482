"""python -m maxwhisper.bench: the ratio regression gate and the fresh-process probes."""

from __future__ import annotations

import json
import sys

from maxwhisper.bench.gate import check
from maxwhisper.bench.pipeline import IMPLS, step_probe, transcribe_probe
from maxwhisper.bench.probes import GRAPHS, compile_time, rss_probe
from maxwhisper.bench.serve_load import SERVERS as SERVE_SERVERS, load
from maxwhisper.bench.sizes import IMPLS as SIZE_IMPLS, WHAT, size_probe
from maxwhisper.sizes import SIZES


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m maxwhisper.bench",
                                description="benchmark helpers: the ratio regression gate, the peak-RSS and compile probes")
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
    k = sub.add_parser("compile", help="print one graph's build + load time in seconds as JSON "
                       "(cold with an empty $XDG_CACHE_HOME)")
    k.add_argument("graph", choices=GRAPHS)
    t = sub.add_parser("transcribe", help="time one pipeline over the LibriSpeech utterances; print JSON")
    t.add_argument("impl", choices=IMPLS)
    t.add_argument("--batch", type=int, default=1)
    t.add_argument("--limit", type=int, default=None, help="only the first N utterances")
    t.add_argument("--device", default="cpu", help="cpu, gpu or gpu:N (max and torch only)")
    t.add_argument("--tokens", action="store_true", help="also each file's text and token ids")
    t.add_argument("--no-warmup", action="store_true", help="time the first file too (a whole-process run)")
    t.add_argument("--dtype", default="float32",
                   help="MAX's precision (float32, q4_0, ...), faster-whisper's compute_type (float32, int8), "
                        "whisper.cpp's file type (f16, q8_0)")
    s = sub.add_parser("step", help="time one-token decoder steps (MAX or PyTorch); print JSON")
    s.add_argument("impl", choices=["max", "torch"])
    s.add_argument("--batch", type=int, default=1)
    s.add_argument("--dtype", default="float32", help="MAX's precision (max only)")
    z = sub.add_parser("size", help="time one size's encoder or decoder step (random weights, MAX or PyTorch); print JSON")
    z.add_argument("impl", choices=SIZE_IMPLS)
    z.add_argument("size", choices=list(SIZES))
    z.add_argument("--what", choices=WHAT, default="encoder")
    z.add_argument("--batch", type=int, default=1)
    z.add_argument("--rounds", type=int, default=3)
    v = sub.add_parser("serve-load", help="N concurrent openai clients over the 107 utterances against one "
                       "server process (maxwhisper serve, or faster-whisper behind the same API); print JSON")
    v.add_argument("server", choices=SERVE_SERVERS)
    v.add_argument("--clients", type=int, default=1)
    v.add_argument("--batch", type=int, default=8, help="maxwhisper serve --max-batch (faster-whisper: 1)")
    v.add_argument("--dtype", default="float32", help="MAX's precision, or faster-whisper's compute_type")
    v.add_argument("--limit", type=int, default=None, help="only the first N utterances")
    args = p.parse_args(argv)
    try:
        if args.command == "serve-load":
            print(json.dumps(load(args.server, args.clients, args.batch, args.dtype, args.limit)))
            return 0
        if args.command == "rss":
            print(json.dumps(rss_probe(args.impl, args.config, args.batch, args.device)))
            return 0
        if args.command == "transcribe":
            print(json.dumps(transcribe_probe(args.impl, args.batch, args.limit, args.device, args.tokens, args.dtype,
                                              not args.no_warmup)))
            return 0
        if args.command == "step":
            print(json.dumps(step_probe(args.impl, args.batch, dtype=args.dtype)))
            return 0
        if args.command == "size":
            print(json.dumps(size_probe(args.impl, args.size, args.what, args.batch, args.rounds)))
            return 0
        if args.command == "compile":
            print(json.dumps({"graph": args.graph, "load_s": compile_time(args.graph)}))
            return 0
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bad = check(args.result, args.baseline, args.slack)
    for line in bad:
        print(f"REGRESSION {line}")
    print("ratio check: " + ("FAILED" if bad else "ok"))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
