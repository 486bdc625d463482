"""End to end and per token: the full MAX pipeline against openai-whisper's, the mixed pipeline and
faster-whisper, each in a fresh process (`maxwhisper.bench.pipeline`), so no implementation's threads
slow another's. Reports, never timed assertions; a plain `pytest` runs each on 2 utterances as a smoke
test, `--benchmark-only` on all 107.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# (impl, batch): sequential, and each in its best configuration for many files; openai-whisper first,
# since every MAX pipeline's texts are compared with its texts
PIPELINES = [("torch", 1), ("max", 1), ("max", 16), ("max-encoder", 1), ("faster-whisper", 1), ("faster-whisper", 16),
             ("whisper.cpp", 1)]
DTYPES = {"whisper.cpp": "f16"}  # its file type (q8_0: `python -m maxwhisper.bench transcribe whisper.cpp --dtype q8_0`)
PEERS = {"faster-whisper": "faster_whisper", "whisper.cpp": "pywhispercpp"}  # the bench extra's modules
SAME_TEXTS = ("max", "max-encoder")  # openai-whisper's decoding on its weights: its texts exactly
# A plain run smoke-tests each code path once: MAX at batch 1 is the batch-16 path with another argument
# (and its tokens equal the batched ones, tests/test_transcribe.py); each probe is a fresh process.
SMOKE_SKIPS = {("max", 1)}  # (impl, batch) of the pipelines
SMOKE_STEP_BATCH = 5  # the decoder step's smoke run: the beam's batch
_texts: dict[tuple, str] = {}  # (impl, limit) -> texts_sha256, from this session's runs


def _probe(*args: str) -> dict:
    p = subprocess.run([sys.executable, "-m", "maxwhisper.bench", *args], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def _openai_whisper_texts(limit: list[str]) -> str:
    """openai-whisper's texts_sha256 on the same files: from its run in this session, or run now (untimed)."""
    if ("torch", tuple(limit)) not in _texts:
        _texts["torch", tuple(limit)] = _probe("transcribe", "torch", *limit)["texts_sha256"]
    return _texts["torch", tuple(limit)]


@pytest.mark.parametrize("impl, batch", PIPELINES, ids=[f"{i}-batch{b}" for i, b in PIPELINES])
def test_bench_transcribe_librispeech(impl, batch, speech_dir, request, memory_record, benchmark):
    if impl in PEERS:
        pytest.importorskip(PEERS[impl], reason=f"{impl} is in the bench extra: pip install '.[bench]'")
    smoke = not request.config.getoption("benchmark_only")
    if smoke and (impl, batch) in SMOKE_SKIPS:
        pytest.skip(f"{impl} at batch {batch} runs under --benchmark-only (a plain run smoke-tests its batch-16 path)")
    limit = ["--limit", "2"] if smoke else []
    dtype = ["--dtype", DTYPES[impl]] if impl in DTYPES else []
    result = benchmark.pedantic(lambda: _probe("transcribe", impl, "--batch", str(batch), *dtype, *limit), rounds=1, iterations=1)
    assert result["files"] == (107 if not limit else 2) and result["seconds"] > 0
    if impl == "torch":
        _texts["torch", tuple(limit)] = result["texts_sha256"]
    memory_record(dict(kind="pipeline", **result))
    reference = _openai_whisper_texts(limit)
    print(f"\n{impl} batch {batch}: {result['files']} files, {result['audio_s']:.0f} s audio in {result['seconds']:.1f} s "
          f"(RTF {result['rtf']:.3f}); time in {result['spent']}; texts {result['texts_sha256']} "
          f"({'=' if result['texts_sha256'] == reference else '!='} openai-whisper's {reference})")
    if impl in SAME_TEXTS:  # a faster pipeline that transcribes differently is not the same work
        assert result["texts_sha256"] == reference, f"{impl} batch {batch}: texts differ from openai-whisper's"


@pytest.mark.parametrize("impl", ["max", "torch"])
@pytest.mark.parametrize("batch", [1, 5])
def test_bench_decoder_step(impl, batch, request, memory_record, benchmark):
    """One-token decoder steps after 32 cached tokens (the median of 50), at batch 1 and 5 (beam 5)."""
    if not request.config.getoption("benchmark_only") and batch != SMOKE_STEP_BATCH:
        pytest.skip("the step at batch 1 runs under --benchmark-only (a plain run smoke-tests batch 5)")
    result = benchmark.pedantic(lambda: _probe("step", impl, "--batch", str(batch)), rounds=1, iterations=1)
    assert result["median_ms"] > 0
    memory_record(dict(kind="decoder-step", **result))
    print(f"\ndecoder step {impl} batch {batch}: {result['median_ms']:.2f} ms")


TRUE_SIZES = ("base", "small", "medium", "large-v3-turbo")


@pytest.mark.parametrize("impl", ["max", "torch", "ct2-float32", "ct2-int8"])
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("what", ["encoder", "step"])
@pytest.mark.parametrize("size", TRUE_SIZES)
def test_bench_true_size(size, what, batch, impl, request, memory_record, benchmark):
    """Each size's encoder, and one decoder step after 32 cached tokens, at batch 1 and 8: MAX float32
    against openai-whisper's PyTorch float32 and CTranslate2 float32 and int8 (its own converter, the
    same weights), each in a process of its own (random weights at the true dims; large-v3-turbo's
    encoder at batch 8 takes minutes a call here), so --benchmark-only only."""
    if not request.config.getoption("benchmark_only"):
        pytest.skip("the true-size speed runs under --benchmark-only (minutes of compiles and calls)")
    if impl.startswith("ct2"):
        pytest.importorskip("ctranslate2", reason="CTranslate2 is in the bench extra: pip install -e .[test,bench]")
    result = benchmark.pedantic(lambda: _probe("size", impl, size, "--what", what, "--batch", str(batch)),
                                rounds=1, iterations=1)
    assert result["median_ms"] > 0
    memory_record(dict(kind=f"true-size-{what}", **result))
    print(f"\n{size} {what} {impl} batch {batch}: {result['median_ms']:.1f} ms, "
          f"{1e3 * result['gflop'] / result['median_ms']:.1f} GFLOP/s; {json.dumps(result)}")
