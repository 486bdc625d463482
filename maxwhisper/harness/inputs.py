"""What the harness feeds the layers: random weights at trained scale and activations per regime.

One definition of each: the property tests, the golden and mutation tests, the benchmarks and the
peak-RSS probe all draw from here, so a seed means the same data everywhere.
Every generator is `(rng, dims, batch, length, regime) -> float32 array`; `length` counts the
layer's own positions (encoder frames; the mel has twice as many).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from whisper.model import ModelDimensions

from maxwhisper.checkpoints import expected_shapes


def random_params(rng: np.random.Generator, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Weights at the scale of trained ones: matrices ~ N(0, 1/fan_in), LayerNorm gains near 1."""
    out = {}
    for name, shape in shapes.items():
        if len(shape) >= 2 and not name.endswith("positional_embedding"):
            w = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        elif name.endswith("weight"):  # a LayerNorm gain
            w = 1.0 + 0.3 * rng.standard_normal(shape)
        else:
            w = 0.3 * rng.standard_normal(shape)
        out[name] = w.astype(np.float32)
    return out


def random_weights(rng: np.random.Generator, dims: ModelDimensions, prefix: str = "encoder.") -> dict[str, np.ndarray]:
    """A state dict (openai-whisper keys under `prefix`) of trained-scale random weights.

    Includes a random positional embedding, so a graph that computed Whisper's sinusoids itself
    instead of reading the checkpoint's would fail.
    """
    return random_params(rng, {k: v for k, v in expected_shapes(dims).items() if k.startswith(prefix)})


def acts(rng, dims, batch, length, regime, width=None, scale=1.0) -> np.ndarray:
    """Residual-stream-like activations: unit noise plus a per-channel offset, times `scale`."""
    width = width or dims.n_audio_state
    x = rng.standard_normal((batch, length, width)) * scale
    x += rng.standard_normal((batch, 1, width)) * scale  # a per-channel offset, as residual streams have
    return x.astype(np.float32)


def mel(rng, dims, batch, length, regime="normal") -> np.ndarray:
    """(batch, n_mels, 2 * length) log-mel. Whisper's lies in about [-1.5, 1.5]; "extreme" is far
    outside it (the stem is affine up to its GELUs)."""
    lo, hi = (-1.5, 1.5) if regime == "normal" else (-40.0, 40.0)
    return rng.uniform(lo, hi, (batch, dims.n_mels, 2 * length)).astype(np.float32)


def random_mel(rng: np.random.Generator, dims: ModelDimensions, batch: int) -> np.ndarray:
    """A full 30 s window's worth of "normal" log-mel: what `MaxWhisper.encode` takes."""
    return mel(rng, dims, batch, dims.n_audio_ctx)


def gelu_input(rng, dims, batch, length, regime) -> np.ndarray:
    if regime == "normal":
        return (rng.standard_normal((batch, length, 64)) * 3).astype(np.float32)
    # magnitudes 1e-6 .. 1e4 with both signs, and exact zeros: the erf tails and the linear regime
    mag = 10.0 ** rng.uniform(-6, 4, (batch, length, 64))
    x = mag * rng.choice([-1.0, 0.0, 1.0], (batch, length, 64), p=[0.45, 0.1, 0.45])
    return x.astype(np.float32)


def ln_input(rng, dims, batch, length, regime) -> np.ndarray:
    if regime == "normal":
        return acts(rng, dims, batch, length, regime, scale=3.0)
    # near-constant rows: variance from 0 to ~1e-4, around eps = 1e-5, on offsets up to 10
    offset = rng.uniform(-10, 10, (batch, length, 1))
    spread = 10.0 ** rng.uniform(-5, -2, (batch, length, 1)) * rng.choice([0.0, 1.0], (batch, length, 1))
    return (offset + spread * rng.standard_normal((batch, length, dims.n_audio_state))).astype(np.float32)


def attn_input(rng, dims, batch, length, regime) -> np.ndarray:
    # "extreme": large activations make the scores peak, so softmax rows are nearly one-hot
    return acts(rng, dims, batch, length, regime, scale=1.0 if regime == "normal" else 8.0)


# --- the decoder: one step of `n_tok` tokens after `n_cache` cached ones --------------------------

def tokens(rng, dims, batch, length, regime) -> np.ndarray:
    """Token ids (batch, length) int64; "extreme" takes the vocabulary's ends (ids 0.. and the
    timestamp tokens at the top), where an off-by-one in the embedding's rows would show."""
    if regime == "normal":
        return rng.integers(0, dims.n_vocab, (batch, length), dtype=np.int64)
    ends = np.concatenate([np.arange(8), np.arange(dims.n_vocab - 8, dims.n_vocab)])
    return rng.choice(ends, (batch, length)).astype(np.int64)


def features(rng, dims, batch, length, regime) -> np.ndarray:
    """Audio features (batch, n_audio_ctx, n_audio_state): the encoder's output is LayerNormed."""
    return acts(rng, dims, batch, dims.n_audio_ctx, regime, scale=1.0 if regime == "normal" else 8.0)


def step_lengths(rng, length: int) -> tuple[int, int]:
    """(n_cache, n_tok) for a step openai-whisper takes: the prompt (`length` tokens, empty cache)
    or one token after `length` cached ones, half the time each."""
    return (0, length) if rng.random() < 0.5 else (length, 1)


# openai-whisper's first decoding step takes its initial tokens at once: sot, notimestamps
PROMPT = 2


def teacher_tokens(dims, text: str) -> np.ndarray:
    """(1, T): the start-of-transcript sequence (no timestamps), `text`'s tokens, end of text: what
    the decoder is teacher-forced on (verify, the golden decoder fixture)."""
    from whisper.tokenizer import get_tokenizer

    # openai-whisper's Whisper.is_multilingual and num_languages, from the vocabulary size
    tok = get_tokenizer(dims.n_vocab >= 51865, num_languages=dims.n_vocab - 51765 - int(dims.n_vocab >= 51865))
    return np.array([[*tok.sot_sequence_including_notimestamps, *tok.encode(" " + text.strip()), tok.eot]])
