"""Golden decoder fixture: tiny.en's float64 reference decoder, teacher-forced on jfk.flac's transcript.

`python -m maxwhisper.harness.make_fixtures decoder` writes it (see `make_fixtures.build_decoder` for
what is inside); tests load it with `load_fixture()` and run the MAX decoder on its stored features
and tokens, with neither the reference encoder nor the speech folder. Stale and missing files are
refused as the encoder's fixture is (`fixture.StaleFixtureError`, naming the regenerating command).

A layer is stored at a subset of its positions (and the logits at a subset of columns), so a test
takes the same subset of MAX's and PyTorch's full traces with `select`, the one place that knows how.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maxwhisper.decoder import is_cross  # a cross-attention key or value: one row per audio frame
from maxwhisper.harness.compare import top1_failures
from maxwhisper.harness.fixture import (AUDIO, MODEL, REGENERATE as _ALL, check_hash, common_reasons, raise_if_stale,
                                        read, repo_file)
from maxwhisper.harness.inputs import teacher_tokens
from maxwhisper.sizes import SIZES
from maxwhisper.trace import decoder_trace

# Bump when the file's layout or what it holds changes (keys, positions, columns, how it is made).
FORMAT_VERSION = 1
FIXTURE = repo_file("fixtures/tiny_en_jfk_decoder.npz")
REGENERATE = _ALL + " decoder"
WHAT = "golden decoder fixture"
LOGITS = "decoder.logits"


def select(layer: str, full: np.ndarray, token_positions: np.ndarray, frame_positions: np.ndarray,
           logit_columns: np.ndarray) -> np.ndarray:
    """The stored part of `layer`'s full activation (batch, T or frames, channels): cross-attention keys
    and values at `frame_positions`, the logits at `logit_columns` per step, the rest at `token_positions`."""
    if layer == LOGITS:
        return np.take_along_axis(full, logit_columns[None], axis=-1)
    return full[:, frame_positions if is_cross(layer) else token_positions]


@dataclass(frozen=True)
class DecoderFixture:
    path: Path
    version: int
    weights_hash: str           # maxwhisper.checkpoints.weights_hash of the whole tiny.en state dict
    mel_hash: str               # the encoder golden fixture's mel, which the features were made from
    text: str                   # the transcript the tokens spell
    whisper_version: str        # informational: openai-whisper and torch that made the file
    torch_version: str
    features: np.ndarray        # (1, n_audio_ctx, n_audio_state) float32: the decoder's input
    tokens: np.ndarray          # (1, T) int64: inputs.teacher_tokens(dims, text)
    prompt: int                 # tokens in the first step (the rest: one per step through the cache)
    layer_ids: tuple[str, ...]  # as maxwhisper.trace.decoder_trace
    token_positions: np.ndarray     # the stored token positions of every per-token layer (sorted)
    frame_positions: np.ndarray     # the stored audio frames of the cross-attention keys and values
    layers: dict[str, np.ndarray]   # id -> (1, positions, channels) float32; logits: (1, T, columns)
    logit_columns: np.ndarray       # (T, C) int64: the vocabulary columns stored at each step
    full_steps: np.ndarray          # steps whose logits are stored over the whole vocabulary
    full_logits: np.ndarray         # (1, len(full_steps), n_vocab) float32
    top1: np.ndarray                # (T,) the float64 reference's argmax at each step, whole vocabulary
    top2_gap: np.ndarray            # (T,) float64: its largest logit minus its second largest

    def select(self, layer: str, full: np.ndarray) -> np.ndarray:
        """The stored part of `layer`'s full activation from any producer (`select`)."""
        return select(layer, full, self.token_positions, self.frame_positions, self.logit_columns)

    def top1_failures(self, logits: np.ndarray, tie: float | np.ndarray) -> list[int]:
        """Steps where `logits`' (1, T, n_vocab) argmax differs from the reference's, save near-ties
        (the reference's top two within `tie`, one figure or one per step, which rounding may break
        either way)."""
        return top1_failures(np.asarray(logits)[0], self.top1, self.top2_gap, tie)


def load_fixture(path: str | Path = FIXTURE) -> DecoderFixture:
    """Read the fixture; a missing, unreadable or self-inconsistent file raises StaleFixtureError."""

    def build(path: Path, z) -> tuple[DecoderFixture, str]:
        fx = DecoderFixture(
            path=path, version=int(z["meta/format_version"]), weights_hash=str(z["meta/weights_hash"]),
            mel_hash=str(z["meta/mel_hash"]), text=str(z["meta/text"]),
            whisper_version=str(z["meta/whisper_version"]), torch_version=str(z["meta/torch_version"]),
            features=z["features"], tokens=z["tokens"], prompt=int(z["meta/prompt"]),
            layer_ids=tuple(str(s) for s in z["layer_ids"]),
            token_positions=z["positions/tokens"], frame_positions=z["positions/frames"],
            layers={k: z[f"act/{k}"] for k in (str(s) for s in z["layer_ids"])}, logit_columns=z["logits/columns"],
            full_steps=z["logits/full_steps"], full_logits=z["logits/full"], top1=z["logits/top1"],
            top2_gap=z["logits/top2_gap"])
        return fx, str(z["meta/features_hash"])

    fx, recorded = read(path, WHAT, REGENERATE, build)
    check_hash(fx.features, recorded, fx.path, WHAT, "features", REGENERATE)
    return fx


def check_fresh(fixture: DecoderFixture, weights_hash: str, text: str | None = None) -> None:
    """Raise StaleFixtureError naming every reason the fixture no longer matches (None: it does).

    Always checked: the format version, the weights (exact), the layer ids of `layers.decoder_trace`,
    and the tokens, which openai-whisper's tokenizer must still make from the stored text.
    `text`, when given, is jfk.flac's transcript read now (it needs the speech folder, so it is optional).
    """
    reasons = common_reasons(fixture.version, FORMAT_VERSION, fixture.weights_hash, weights_hash)
    ids = tuple(t.id for t in decoder_trace(SIZES[MODEL].n_text_layer))
    if fixture.layer_ids != ids:
        reasons.append(f"layer ids differ from trace.decoder_trace ({len(fixture.layer_ids)} stored, {len(ids)} now)")
    now = teacher_tokens(SIZES[MODEL], fixture.text)
    if now.shape != fixture.tokens.shape or (now != fixture.tokens).any():
        reasons.append(f"tokens differ from teacher_tokens of the stored text computed now ({now.shape[1]} tokens)")
    if text is not None and text != fixture.text:
        reasons.append(f"stored text {fixture.text!r} != {AUDIO}'s transcript now {text!r}")
    raise_if_stale(reasons, WHAT, fixture.path, REGENERATE)
