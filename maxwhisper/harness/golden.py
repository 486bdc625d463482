"""Golden fixture: tiny.en's float64 reference activations on jfk.flac, in one versioned file.

`python -m maxwhisper.harness.make_fixtures` writes it (see that module for what is inside); tests load it
with `load_fixture()` and run without torch's reference encoder or the speech folder. A fixture made
by other code (FORMAT_VERSION), other weights or another input mel is refused by `check_fresh`,
whose message names the reason and the command that regenerates it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maxwhisper.harness.fixture import (AUDIO, MODEL, REGENERATE, check_hash, common_reasons, raise_if_stale, read,
                                        repo_file)
from maxwhisper.sizes import SIZES
from maxwhisper.trace import encoder_trace

# Bump when the file's layout or what it holds changes (keys, positions, how activations are made).
FORMAT_VERSION = 1
FIXTURE = repo_file("fixtures/tiny_en_jfk.npz")
# How far the stored log-mel may sit from the log-mel of jfk.flac computed now. The same code gives
# different float32 rounding on different CPUs (FFT and resampler SIMD paths): 2.4e-5 max |diff|
# between an AMD EPYC and an Intel Xeon with AMX. A real front-end change is far larger: soxr
# quality "MQ" instead of "HQ" moves it by 7.4e-3, one channel instead of the mean by 0.49.
# (A byte hash here failed CI on the first machine that was not the one that made the fixture.)
MEL_ATOL = 5e-4
WHAT = "golden fixture"


@dataclass(frozen=True)
class GoldenFixture:
    path: Path
    version: int
    weights_hash: str        # maxwhisper.checkpoints.weights_hash of the whole tiny.en state dict
    mel_hash: str            # sha256 of `mel`'s float32 bytes
    whisper_version: str     # informational: openai-whisper and torch that made the file
    torch_version: str
    mel: np.ndarray          # (1, n_mels, 3000) float32: the encoder's input
    n_samples: int           # length of the audio at 16 kHz (speech ends there, padding follows)
    layer_ids: tuple[str, ...]          # execution order, as maxwhisper.layers.encoder_trace
    frames: dict[str, int]              # layer id -> full time length (3000 or 1500)
    positions: dict[int, np.ndarray]    # full time length -> the stored time positions (sorted)
    layers: dict[str, np.ndarray]       # layer id -> (1, len(positions), channels) float32
    inputs: dict[str, np.ndarray]       # layer id -> that layer's INPUT, where it is no layer's output
                                        # (`encoder.blocks.i.mlp_ln`), same form
    producers: dict[str, str | None]    # layer id -> the id whose output is its input (Traced.input)

    def positions_of(self, layer: str) -> np.ndarray:
        return self.positions[self.frames[layer]]

    def input_of(self, layer: str) -> np.ndarray:
        """The stored input of a position-wise layer, at the same positions as its output."""
        if layer in self.inputs:
            return self.inputs[layer]
        if self.producers.get(layer) is None:
            raise KeyError(f"{self.path} stores no input for {layer!r}: its input is no traced value")
        return self.layers[self.producers[layer]]


def load_fixture(path: str | Path = FIXTURE) -> GoldenFixture:
    """Read the fixture; a missing, unreadable or self-inconsistent file raises StaleFixtureError."""

    def build(path: Path, z) -> GoldenFixture:
        ids = tuple(str(s) for s in z["layer_ids"])
        return GoldenFixture(
            path=path, version=int(z["meta/format_version"]),
            weights_hash=str(z["meta/weights_hash"]), mel_hash=str(z["meta/mel_hash"]),
            whisper_version=str(z["meta/whisper_version"]), torch_version=str(z["meta/torch_version"]),
            mel=z["mel"], n_samples=int(z["meta/n_samples"]), layer_ids=ids,
            frames={k: int(n) for k, n in zip(ids, z["layer_frames"])},
            positions={int(k.split("/")[1]): z[k] for k in z.files if k.startswith("positions/")},
            layers={k: z[f"act/{k}"] for k in ids},
            inputs={k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("input/")},
            producers={t.id: t.input for t in encoder_trace(SIZES[MODEL].n_audio_layer)})

    fx = read(path, WHAT, REGENERATE, build)
    check_hash(fx.mel, fx.mel_hash, fx.path, WHAT, "mel", REGENERATE)
    return fx


def check_fresh(fixture: GoldenFixture, weights_hash: str, mel: np.ndarray | None = None) -> None:
    """Raise StaleFixtureError naming every reason the fixture no longer matches (None: it does).

    `weights_hash` is that of the tiny.en state dict loaded now (exact: weights are data, not
    arithmetic); `mel`, when given, the log-mel of jfk.flac computed now (it needs the speech folder,
    so it is optional), which must match the stored one within MEL_ATOL.
    """
    reasons = common_reasons(fixture.version, FORMAT_VERSION, fixture.weights_hash, weights_hash)
    if mel is not None:
        if mel.shape != fixture.mel.shape:
            reasons.append(f"input mel shape {fixture.mel.shape} != log-mel of {AUDIO} computed now "
                           f"{mel.shape}")
        else:
            diff = float(np.max(np.abs(mel.astype(np.float64) - fixture.mel)))
            if not diff <= MEL_ATOL:  # NaN counts as stale
                reasons.append(f"input mel differs from the log-mel of {AUDIO} computed now by "
                               f"max |diff| {diff:.2e} > {MEL_ATOL:.0e}")
    raise_if_stale(reasons, WHAT, fixture.path, REGENERATE)
