"""Golden fixture: tiny.en's float64 reference activations on jfk.flac, in one versioned file.

`python -m maxwhisper.harness.make_fixtures` writes it (see that module for what is inside); tests load it
with `load_fixture()` and run without torch's reference encoder or the speech folder. A fixture made
by other code (FORMAT_VERSION), other weights or another input mel is refused by `check_fresh`,
whose message names the reason and the command that regenerates it.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maxwhisper.layers import encoder_trace
from maxwhisper.sizes import SIZES

# Bump when the file's layout or what it holds changes (keys, positions, how activations are made).
FORMAT_VERSION = 1
def repo_file(rel: str) -> Path:
    """A file checked into the repository: beside this source tree (a checkout, an editable install),
    else under the current directory (an installed package, e.g. tox's, run from the repo root)."""
    here = Path(__file__).resolve().parents[2] / rel
    return here if here.exists() else Path.cwd() / rel


FIXTURE = repo_file("fixtures/tiny_en_jfk.npz")
REGENERATE = "python -m maxwhisper.harness.make_fixtures"
# How far the stored log-mel may sit from the log-mel of jfk.flac computed now. The same code gives
# different float32 rounding on different CPUs (FFT and resampler SIMD paths): 2.4e-5 max |diff|
# between an AMD EPYC and an Intel Xeon with AMX. A real front-end change is far larger: soxr
# quality "MQ" instead of "HQ" moves it by 7.4e-3, one channel instead of the mean by 0.49.
# (A byte hash here failed CI on the first machine that was not the one that made the fixture.)
MEL_ATOL = 5e-4
MODEL = "tiny.en"
AUDIO = "jfk.flac"


class StaleFixtureError(RuntimeError):
    """The golden fixture does not match the current code, weights or input (or is unreadable)."""


def float32_hash(a: np.ndarray) -> str:
    """sha256 hex of the float32 C-order bytes of an array (a log-mel, the decoder's features; shape
    and dtype are checked apart)."""
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


@dataclass(frozen=True)
class GoldenFixture:
    path: Path
    version: int
    weights_hash: str        # maxwhisper.weights.weights_hash of the whole tiny.en state dict
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
    path = Path(path)
    if not path.is_file():
        raise StaleFixtureError(f"golden fixture {path} is missing: regenerate it with `{REGENERATE}`")
    try:
        with np.load(path, allow_pickle=False) as z:
            ids = tuple(str(s) for s in z["layer_ids"])
            frames = {k: int(n) for k, n in zip(ids, z["layer_frames"])}
            fx = GoldenFixture(
                path=path, version=int(z["meta/format_version"]),
                weights_hash=str(z["meta/weights_hash"]), mel_hash=str(z["meta/mel_hash"]),
                whisper_version=str(z["meta/whisper_version"]),
                torch_version=str(z["meta/torch_version"]),
                mel=z["mel"], n_samples=int(z["meta/n_samples"]), layer_ids=ids, frames=frames,
                positions={int(k.split("/")[1]): z[k] for k in z.files if k.startswith("positions/")},
                layers={k: z[f"act/{k}"] for k in ids},
                inputs={k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("input/")},
                producers={t.id: t.input for t in encoder_trace(SIZES[MODEL].n_audio_layer)})
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise StaleFixtureError(f"golden fixture {path} is unreadable or incomplete ({e}): "
                                f"regenerate it with `{REGENERATE}`") from e
    if float32_hash(fx.mel) != fx.mel_hash:
        raise StaleFixtureError(f"golden fixture {path} is corrupt: its mel does not hash to its "
                                f"recorded input hash: regenerate it with `{REGENERATE}`")
    return fx


def check_fresh(fixture: GoldenFixture, weights_hash: str, mel: np.ndarray | None = None) -> None:
    """Raise StaleFixtureError naming every reason the fixture no longer matches (None: it does).

    `weights_hash` is that of the tiny.en state dict loaded now (exact: weights are data, not
    arithmetic); `mel`, when given, the log-mel of jfk.flac computed now (it needs the speech folder,
    so it is optional), which must match the stored one within MEL_ATOL.
    """
    reasons = []
    if fixture.version != FORMAT_VERSION:
        reasons.append(f"format version {fixture.version} != current FORMAT_VERSION {FORMAT_VERSION}")
    if fixture.weights_hash != weights_hash:
        reasons.append(f"weights hash {fixture.weights_hash[:12]}.. != current {MODEL} weights "
                       f"{weights_hash[:12]}..")
    if mel is not None:
        if mel.shape != fixture.mel.shape:
            reasons.append(f"input mel shape {fixture.mel.shape} != log-mel of {AUDIO} computed now "
                           f"{mel.shape}")
        else:
            diff = float(np.max(np.abs(mel.astype(np.float64) - fixture.mel)))
            if not diff <= MEL_ATOL:  # NaN counts as stale
                reasons.append(f"input mel differs from the log-mel of {AUDIO} computed now by "
                               f"max |diff| {diff:.2e} > {MEL_ATOL:.0e}")
    if reasons:
        raise StaleFixtureError(f"golden fixture {fixture.path} is stale: " + "; ".join(reasons)
                                + f". Regenerate it with `{REGENERATE}`")


def save_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed's format, byte-reproducible: fixed entry timestamps, insertion order.

    np.savez_compressed stamps each zip entry with the current time, so two runs differ in bytes
    even when every array is equal; np.load reads this file exactly as it reads theirs.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)
    Path(path).write_bytes(buf.getvalue())
