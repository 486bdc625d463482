"""Load on `maxwhisper serve`: concurrent `openai` clients over the 107 LibriSpeech utterances against
one server process (`python -m maxwhisper.bench serve-load`), and faster-whisper behind the same API.
Throughput and latency reported, never asserted (the goal, 32 clients at 2x one request at a time, is
judged in benchmarks/README.md); a plain `pytest` runs one configuration on 4 utterances as a smoke test.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# (server, --max-batch, clients, dtype): one request at a time (a batch of 1 decodes one window at a time),
# then the same server batching across 8 and 32 clients; faster-whisper one request at a time as speaches
LOADS = [("maxwhisper", 1, 1, "float32"), ("maxwhisper", 1, 32, "float32"), ("maxwhisper", 8, 8, "float32"),
         ("maxwhisper", 8, 32, "float32"), ("maxwhisper", 8, 32, "int8"), ("faster-whisper", 1, 1, "int8"),
         ("faster-whisper", 1, 32, "int8")]
SMOKE = ("maxwhisper", 8, 8, "float32")


@pytest.mark.parametrize("server, batch, clients, dtype", LOADS, ids=[f"{s}-batch{b}-clients{c}-{d}" for s, b, c, d in LOADS])
def test_bench_serve_load(server, batch, clients, dtype, speech_dir, request, memory_record, benchmark):
    pytest.importorskip("fastapi", reason="the serve extra: pip install '.[serve]'")
    if server == "faster-whisper":
        pytest.importorskip("faster_whisper", reason="faster-whisper is in the bench extra: pip install '.[bench]'")
    smoke = not request.config.getoption("benchmark_only")
    if smoke and (server, batch, clients, dtype) != SMOKE:
        pytest.skip("runs under --benchmark-only (a plain run smoke-tests one configuration)")
    cmd = [sys.executable, "-m", "maxwhisper.bench", "serve-load", server, "--clients", str(clients),
           "--batch", str(batch), "--dtype", dtype, *(["--limit", "4"] if smoke else [])]

    def run():
        p = subprocess.run(cmd, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr[-3000:]
        return json.loads(p.stdout.strip().splitlines()[-1])

    result = benchmark.pedantic(run, rounds=1, iterations=1)
    assert result["files"] == (4 if smoke else 107) and result["seconds"] > 0
    memory_record(dict(kind="serve-load", **result))
    print(f"\n{server} batch {batch}, {clients} clients, {dtype}: {result['requests_per_s']:.2f} requests/s, "
          f"{result['audio_s_per_s']:.1f} s of audio/s, latency p50 {result['p50_s']:.2f} s p95 {result['p95_s']:.2f} s")
