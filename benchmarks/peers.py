"""Whole-process runs, alternated: each configuration `python -m maxwhisper.bench transcribe ... --no-warmup`
in a fresh process, its wall time from start to exit (imports, model load, every file) measured here.

    python benchmarks/peers.py OUT.jsonl ROUNDS IMPL:DTYPE:BATCH ...
    python benchmarks/peers.py benchmarks/peers_2026-12-07.jsonl 2 max:int8:1 faster-whisper:int8:1 whisper.cpp:q8_0:1
"""

import json
import subprocess
import sys
import time


def main(out: str, rounds: str, *configs: str) -> None:
    for r in range(int(rounds)):
        for cfg in configs:
            impl, dtype, batch = cfg.split(":")
            cmd = [sys.executable, "-m", "maxwhisper.bench", "transcribe", impl, "--dtype", dtype, "--batch", batch, "--no-warmup"]
            t0 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True)
            whole = time.perf_counter() - t0
            if p.returncode:
                raise SystemExit(f"{cfg}: exit {p.returncode}\n{p.stderr[-2000:]}")
            row = {"round": r + 1, "whole_s": round(whole, 3), **json.loads(p.stdout.strip().splitlines()[-1]),
                   "started": time.strftime("%H:%M:%S", time.gmtime(time.time() - whole))}
            print(f"{cfg}: whole {whole:.1f} s, transcription {row['seconds']:.1f} s, load {row['load_s']:.1f} s", flush=True)
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
