"""Measurements that need a fresh process of their own: peak RSS and a graph's compile time.

`python -m maxwhisper.bench rss|compile ...` runs one of them and prints JSON; the benchmark suite
starts it in a subprocess so that the peak, or the empty compile cache, is that configuration's own.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from maxwhisper.sizes import SIZES


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_probe(impl: str, config: str, batch: int, device: str = "cpu") -> dict:
    """Peak RSS of loading one encoder and running it twice, in this (fresh) process.

    `config` is "tiny.en" (the embedded weights) or a size in SIZES (random weights). The baseline
    is the RSS after the imports and the numpy state dict exist; the peak high-water mark is reset
    there (Linux's clear_refs), so the peak counts what this implementation allocates on top.
    """
    import numpy as np

    from maxwhisper.harness.inputs import random_mel, random_weights

    if config == "tiny.en":
        from maxwhisper.checkpoints import load_weights

        dims, sd = load_weights("tiny.en")
    elif config in SIZES:
        dims = SIZES[config]
        sd = random_weights(np.random.default_rng(0), dims)
    else:
        raise ValueError(f"config {config!r}: expected 'tiny.en' or one of {sorted(SIZES)}")
    mel = random_mel(np.random.default_rng(1), dims, batch)
    import torch  # imported by both sides (openai-whisper's dims); imported before the baseline

    torch.set_num_threads(os.cpu_count() or 1)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    baseline = _status_mb("VmRSS")
    if impl == "max":
        from maxwhisper.model import MaxWhisper

        model = MaxWhisper(dims, sd, device)
        run = lambda: model.encode(mel)
    elif impl == "torch":
        from reference.modules import reference_encoder

        from maxwhisper.device import parse_device

        enc = reference_encoder(dims, sd, torch.float32).to(parse_device(device).torch)
        run = lambda: enc(torch.from_numpy(mel).to(next(enc.parameters()).device)).cpu().numpy()
    else:
        raise ValueError(f"impl {impl!r}: expected 'max' or 'torch'")
    with torch.no_grad():
        run()
        run()
    return dict(impl=impl, config=f"{config}:batch{batch}", device=device, baseline_mb=baseline,
                peak_mb=_status_mb("VmHWM"), hwm_reset=reset)


# What `compile_time` can load: the production encoder, or a registry record's one-layer graph.
GRAPHS = ("encoder", "block", "conv_stem", "layer_norm")


def compile_time(graph: str) -> float:
    """Seconds to build and load one graph for the embedded tiny.en in this process: a cold compile
    when MAX's cache (under $XDG_CACHE_HOME) is empty, a cache load otherwise."""
    from maxwhisper.checkpoints import load_weights

    if graph not in GRAPHS:
        raise ValueError(f"graph {graph!r}: expected one of {', '.join(GRAPHS)}")
    dims, sd = load_weights("tiny.en")
    t0 = time.perf_counter()
    if graph == "encoder":
        from maxwhisper.model import MaxWhisper

        MaxWhisper(dims, sd).compile()
    else:
        from maxwhisper.harness.registry import SPECS
        from maxwhisper.harness.runners import compile_layer

        compile_layer(SPECS[graph], dims)
    return time.perf_counter() - t0
