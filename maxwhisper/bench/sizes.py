"""Speed at true size: one size's encoder, or one decoder step, timed in a process of its own (MAX's
worker threads slow PyTorch in a process where MAX has run), on seeded random weights at the size's
true dimensions (`maxwhisper.sizes`): `python -m maxwhisper.bench size IMPL SIZE --what ...`."""

from __future__ import annotations

import os
import time

import numpy as np

IMPLS = ("max", "torch")
WHAT = ("encoder", "step")


def _median_ms(run, rounds: int) -> tuple[float, list[float]]:
    run()  # the first call loads and warms; it is not counted
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        run()
        times.append(1e3 * (time.perf_counter() - t0))
    return float(np.median(times)), times


def size_probe(impl: str, size: str, what: str = "encoder", batch: int = 1, rounds: int = 3,
               cache: int = 32) -> dict:
    """Median milliseconds of `size`'s encoder on `batch` random mels, or of one one-token decoder
    step of `batch` sequences after `cache` cached tokens over random audio features: MAX float32, or
    openai-whisper's own PyTorch modules in float32 on every core."""
    import torch

    from maxwhisper.harness.inputs import random_mel, random_weights
    from maxwhisper.sizes import SIZES

    if impl not in IMPLS or what not in WHAT or size not in SIZES:
        raise ValueError(f"impl {impl!r} (one of {IMPLS}), what {what!r} (one of {WHAT}), size {size!r} "
                         f"(one of {', '.join(SIZES)})")
    torch.set_num_threads(os.cpu_count() or 1)
    dims = SIZES[size]
    sd = random_weights(np.random.default_rng(0), dims, prefix="encoder." if what == "encoder" else "")
    rng = np.random.default_rng(1)
    if what == "encoder":
        mel = random_mel(rng, dims, batch)
        if impl == "max":
            from maxwhisper.model import MaxWhisper

            model = MaxWhisper(dims, sd)
            run = lambda: model.encode(mel)  # noqa: E731
        else:
            from reference.modules import reference_encoder

            enc = reference_encoder(dims, sd, torch.float32)
            run = lambda: enc(torch.from_numpy(mel)).numpy()  # noqa: E731
        with torch.no_grad():
            median, times = _median_ms(run, rounds)
    else:
        features = rng.standard_normal((batch, dims.n_audio_ctx, dims.n_audio_state)).astype(np.float32)
        prompt = rng.integers(0, dims.n_vocab - 1000, (batch, cache))
        steps = 16 * rounds
        times = []
        if impl == "max":
            from maxwhisper.model import MaxWhisper

            decoder = MaxWhisper(dims, sd).decoder
            for _ in range(2):  # the first pass compiles (or loads) and warms
                state = decoder.start(features)
                state.step(prompt)
                times = []
                for i in range(steps):
                    t0 = time.perf_counter()
                    state.step(prompt[:, i % cache:i % cache + 1])
                    times.append(1e3 * (time.perf_counter() - t0))
        else:
            from maxwhisper.checkpoints import to_torch_model

            tm = to_torch_model(dims, sd)
            xa = torch.from_numpy(features)
            with torch.no_grad():
                for _ in range(2):
                    kv, hooks = tm.install_kv_cache_hooks()
                    tm.decoder(torch.from_numpy(prompt), xa, kv_cache=kv)
                    times = []
                    for i in range(steps):
                        t0 = time.perf_counter()
                        tm.decoder(torch.from_numpy(prompt[:, i % cache:i % cache + 1]), xa, kv_cache=kv)
                        times.append(1e3 * (time.perf_counter() - t0))
                    for h in hooks:
                        h.remove()
        median = float(np.median(times))
    mode = "MAX float32 (IEEE), cpu" if impl == "max" else f"openai-whisper PyTorch {torch.__version__} float32, IEEE, cpu"
    return dict(impl=impl, size=size, what=what, batch=batch, mode=mode, median_ms=median,
                times_ms=[round(t, 2) for t in times], threads=torch.get_num_threads())
