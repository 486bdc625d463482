"""Whisper's published model sizes, the one table every size in this project comes from: every name
openai-whisper's `load_model` accepts, and distil-whisper's published English and large models.

Only tiny.en's real weights are reachable here (embedded); the other sizes are built with random
weights at these true dimensions (tests, benchmarks). `.en` models have one token fewer (no
language tokens); large-v3 (so large, turbo and distil-large-v3) reads 128 mel bins and has one more
language token. The decoder's depth is its own: large-v3-turbo keeps 4 of large-v3's 32 decoder
layers, distil-whisper 2 (4 for distil-small.en), under a full-depth encoder.
"""

from whisper.model import ModelDimensions


def _dims(n_mels: int, width: int, heads: int, layers: int, n_vocab: int, text_layers: int | None = None
          ) -> ModelDimensions:
    return ModelDimensions(n_mels, 1500, width, heads, layers, n_vocab, 448, width, heads,
                           layers if text_layers is None else text_layers)


_LARGE_V3 = _dims(128, 1280, 20, 32, 51866)
_TURBO = _dims(128, 1280, 20, 32, 51866, 4)

SIZES: dict[str, ModelDimensions] = {
    "tiny.en": _dims(80, 384, 6, 4, 51864),
    "tiny": _dims(80, 384, 6, 4, 51865),
    "base.en": _dims(80, 512, 8, 6, 51864),
    "base": _dims(80, 512, 8, 6, 51865),
    "small.en": _dims(80, 768, 12, 12, 51864),
    "small": _dims(80, 768, 12, 12, 51865),
    "medium.en": _dims(80, 1024, 16, 24, 51864),
    "medium": _dims(80, 1024, 16, 24, 51865),
    "large-v1": _dims(80, 1280, 20, 32, 51865),
    "large-v2": _dims(80, 1280, 20, 32, 51865),
    "large-v3": _LARGE_V3,
    "large": _LARGE_V3,  # openai-whisper's "large" is large-v3
    "large-v3-turbo": _TURBO,
    "turbo": _TURBO,
    "distil-small.en": _dims(80, 768, 12, 12, 51864, 4),
    "distil-medium.en": _dims(80, 1024, 16, 24, 51864, 2),
    "distil-large-v2": _dims(80, 1280, 20, 32, 51865, 2),
    "distil-large-v3": _dims(128, 1280, 20, 32, 51866, 2),
    "distil-large-v3.5": _dims(128, 1280, 20, 32, 51866, 2),
}
