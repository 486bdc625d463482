"""Speed at true size: one size's encoder, or one decoder step, timed in a process of its own (MAX's
worker threads slow PyTorch in a process where MAX has run), on seeded random weights at the size's
true dimensions (`maxwhisper.sizes`): `python -m maxwhisper.bench size IMPL SIZE --what ...`.

CTranslate2 (faster-whisper's engine) reads the same weights through its own converter: they are
written as a transformers checkpoint (`checkpoints.hf.save_hf`) with openai-whisper's tokenizer
(its tiktoken file, converted by transformers), which `TransformersConverter` needs for the vocabulary.
"""

from __future__ import annotations

import os
import time

import numpy as np

IMPLS = ("max", "torch", "ct2-float32", "ct2-int8")
WHAT = ("encoder", "step")


LONG_S = 60  # a first call this long is the one timed: medium's and turbo's encoders at batch 8 (1-2 min a call here)


def _median_ms(run, rounds: int) -> tuple[float, list[float], float]:
    """The median of `rounds` timed calls after an uncounted first call (it loads and warms); where the
    first took over `LONG_S`, that call alone (its warm-up excess, timed at batch 1 where both are, is a
    few percent of such a call: benchmarks/README.md). Also the first call's milliseconds."""
    t0 = time.perf_counter()
    run()
    first = 1e3 * (time.perf_counter() - t0)
    if first > 1e3 * LONG_S:
        return first, [first], first
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        run()
        times.append(1e3 * (time.perf_counter() - t0))
    return float(np.median(times)), times, first


def work_gflop(dims, what: str, batch: int, cache: int = 32) -> float:
    """The multiply-adds of one call, x2, in GFLOP: the encoder's (`registry.layer_flops`), or one
    decoder step's Linears (cross-attention's keys and values are cached), its attention over `cache`
    tokens and the audio frames, and the logits' product. What a rate (GFLOP/s) is read against: a
    size whose rate is low is bound by something other than its products."""
    from maxwhisper.harness.registry import layer_flops

    if what == "encoder":
        return layer_flops("encoder", dims, batch) / 1e9
    d = dims.n_text_state
    return batch * (dims.n_text_layer * (28 * d * d + 4 * (cache + dims.n_audio_ctx) * d) + 2 * d * dims.n_vocab) / 1e9


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
    if impl.startswith("ct2-"):
        return _ct2_probe(impl, size, dims, sd if what != "encoder" else
                          random_weights(np.random.default_rng(0), dims, prefix=""), what, batch, rounds, cache, rng)
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
            median, times, first = _median_ms(run, rounds)
    else:
        features = rng.standard_normal((batch, dims.n_audio_ctx, dims.n_audio_state)).astype(np.float32)
        prompt = rng.integers(0, dims.n_vocab - 1000, (batch, cache))
        from maxwhisper.bench.pipeline import step_times
        from maxwhisper.model import MaxWhisper

        model = MaxWhisper(dims, sd) if impl == "max" else None
        times = [1e3 * t for t in step_times(model, dims, sd, features, prompt, 16 * rounds)]
        median, first = float(np.median(times)), None
    mode = "MAX float32 (IEEE), cpu" if impl == "max" else f"openai-whisper PyTorch {torch.__version__} float32, IEEE, cpu"
    return dict(impl=impl, size=size, what=what, batch=batch, mode=mode, median_ms=median,
                gflop=round(work_gflop(dims, what, batch, cache), 3),
                times_ms=[round(t, 2) for t in times], first_ms=first and round(first, 1), threads=torch.get_num_threads())


def ct2_model(size: str, dims, state_dict, compute_type: str, root) -> object:
    """A `ctranslate2.models.Whisper` of `state_dict`, converted by CTranslate2's own converter."""
    from pathlib import Path

    import ctranslate2
    import whisper
    import whisper.tokenizer as wt
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.tiktoken import TikTokenConverter

    from maxwhisper.checkpoints.hf import save_hf

    hf, out = Path(root) / "hf", Path(root) / f"ct2-{compute_type}"
    save_hf(dims, state_dict, hf)
    multilingual = dims.n_vocab >= 51865
    enc = wt.get_encoding("multilingual" if multilingual else "gpt2", num_languages=dims.n_vocab - 51765)
    vocab = Path(whisper.__file__).parent / "assets" / f"{'multilingual' if multilingual else 'gpt2'}.tiktoken"
    tok = TikTokenConverter(vocab_file=str(vocab), pattern=enc._pat_str, extra_special_tokens=enc._special_tokens)
    eot = "<|endoftext|>"
    PreTrainedTokenizerFast(tokenizer_object=tok.converted(), eos_token=eot, bos_token=eot, unk_token=eot
                            ).save_pretrained(str(hf))
    quantization = None if compute_type == "float32" else compute_type
    ctranslate2.converters.TransformersConverter(str(hf)).convert(str(out), quantization=quantization, force=True)
    return ctranslate2.models.Whisper(str(out), device="cpu", compute_type=compute_type,
                                      intra_threads=os.cpu_count() or 1)


def _ct2_probe(impl, size, dims, sd, what, batch, rounds, cache, rng) -> dict:
    import tempfile

    import ctranslate2

    from maxwhisper.harness.inputs import random_mel

    compute_type = impl.removeprefix("ct2-")
    with tempfile.TemporaryDirectory() as root:
        model = ct2_model(size, dims, sd, compute_type, root)
    if what == "encoder":
        mel = random_mel(rng, dims, batch)
        median, times, first = _median_ms(lambda: model.encode(ctranslate2.StorageView.from_array(mel), to_cpu=True), rounds)
    else:
        # CTranslate2 has no one-step call: greedy generation of n and n + 16 tokens after the same
        # prompt, the difference over the tokens between them (end of text suppressed)
        features = ctranslate2.StorageView.from_array(
            rng.standard_normal((batch, dims.n_audio_ctx, dims.n_audio_state)).astype(np.float32))
        eot = 50256 if dims.n_vocab == 51864 else 50257
        prompt = [[eot + 1, *row] for row in rng.integers(0, eot, (batch, cache - 1)).tolist()]  # <|startoftranscript|> first

        def run(extra):
            t0 = time.perf_counter()
            r = model.generate(features, prompt, beam_size=1, max_length=cache + extra, suppress_tokens=[eot],
                               suppress_blank=False, max_initial_timestamp_index=dims.n_vocab)
            return time.perf_counter() - t0, len(r[0].sequences_ids[0])

        run(17)
        times = []
        for _ in range(rounds):
            (short, n1), (long, n2) = run(1), run(17)
            if n2 <= n1:
                raise RuntimeError(f"CTranslate2 generated {n1} then {n2} tokens: no step to time")
            times.append(1e3 * (long - short) / (n2 - n1))
        median, first = float(np.median(times)), None
    return dict(impl=impl, size=size, what=what, batch=batch, gflop=round(work_gflop(dims, what, batch, cache), 3),
                mode=f"CTranslate2 {ctranslate2.__version__} "
                f"compute_type={compute_type}, cpu", median_ms=median, times_ms=[round(t, 2) for t in times],
                first_ms=first and round(first, 1), threads=os.cpu_count() or 1)
