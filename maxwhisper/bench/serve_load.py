"""Load on a server of OpenAI's audio API: N concurrent clients (the `openai` package, each request a
file of the 107 LibriSpeech utterances, taken in order from a shared queue) against one server
process started for the run and stopped after it. Throughput and per-request latency.

Servers: "maxwhisper" (`maxwhisper serve`, `--max-batch` B: 1 decodes one window at a time, so one
request's work at a time) and "faster-whisper" (`maxwhisper.bench.fw_server`: faster-whisper behind
the same endpoint, one request at a time as speaches serves it). Both greedy with openai-whisper's
temperature fallback, the same tiny.en weights.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np

SERVERS = ("maxwhisper", "faster-whisper")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(server: str, port: int, batch: int, dtype: str) -> list[str]:
    if server == "maxwhisper":
        # the start-up check runs before /health is ready, outside the timed part; skipped to save its 30 s
        return [sys.executable, "-m", "maxwhisper.cli", "serve", "--port", str(port), "--max-batch", str(batch),
                "--dtype", dtype, "--no-check", "--max-upload-mb", "100"]
    if server == "faster-whisper":
        if batch != 1:
            raise ValueError("faster-whisper's server takes one request at a time (--batch 1)")
        return [sys.executable, "-m", "maxwhisper.bench.fw_server", "--port", str(port), "--compute-type", dtype]
    raise ValueError(f"server must be one of {SERVERS}, got {server!r}")


def load(server: str, clients: int, batch: int = 8, dtype: str = "float32", limit: int | None = None) -> dict:
    import httpx2 as httpx
    import openai

    from maxwhisper.bench.machine import cpu
    from maxwhisper.harness.speech import speech_dir, transcripts
    from maxwhisper.harness.wer import wer

    where = speech_dir()
    if where is None:
        raise ValueError("the speech data (../shared/speech) is absent")
    rows = [r for r in transcripts(where) if r["subset"] != "jfk"][:limit]
    files = [(r["file"].rsplit("/", 1)[-1], (where / r["file"]).read_bytes()) for r in rows]  # sent as stored
    port = _port()
    proc = subprocess.Popen(command(server, port, batch, dtype), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 900
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{server} exited while starting:\n{proc.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server} was not ready in 900 s")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        client = openai.OpenAI(api_key="none", base_url=url + "/v1", max_retries=0, timeout=900)

        def one(i: int) -> tuple[int, str, float]:
            t0 = time.perf_counter()
            text = client.audio.transcriptions.create(file=files[i], model="whisper-1").text
            return i, text, time.perf_counter() - t0

        one(0)  # warm-up: first calls of each graph
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            done = list(pool.map(one, range(len(files))))
        seconds = time.perf_counter() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    texts = [t for _, t, _ in sorted(done)]
    latency = np.array([s for _, _, s in done])
    import soundfile as sf

    audio_s = round(sum(sf.info(where / r["file"]).duration for r in rows), 2)
    refs = [(r["text"], t) for r, t in zip(rows, texts) if r["subset"] == "test-other"]
    return dict(server=server, dtype=dtype, batch=batch, clients=clients, files=len(files), seconds=round(seconds, 3),
                requests_per_s=round(len(files) / seconds, 3), audio_s=audio_s, audio_s_per_s=round(audio_s / seconds, 2),
                p50_s=round(float(np.percentile(latency, 50)), 3), p95_s=round(float(np.percentile(latency, 95)), 3),
                wer_test_other=round(100 * wer(*zip(*refs)), 2) if refs else None,
                texts_sha256=hashlib.sha256("\n".join(t.strip() for t in texts).encode()).hexdigest()[:16],
                cpu=cpu(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
