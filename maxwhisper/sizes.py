"""openai-whisper's published model sizes, the one table every size in this project comes from.

Only tiny.en's real weights are reachable here (embedded); the other sizes are built with random
weights at these true dimensions (tests, benchmarks). `.en` models have one token fewer (no
language tokens); large-v3 reads 128 mel bins and has one more language token.
"""

from whisper.model import ModelDimensions


def _dims(n_mels: int, width: int, heads: int, layers: int, n_vocab: int) -> ModelDimensions:
    return ModelDimensions(n_mels, 1500, width, heads, layers, n_vocab, 448, width, heads, layers)


SIZES: dict[str, ModelDimensions] = {
    "tiny.en": _dims(80, 384, 6, 4, 51864),
    "tiny": _dims(80, 384, 6, 4, 51865),
    "base.en": _dims(80, 512, 8, 6, 51864),
    "base": _dims(80, 512, 8, 6, 51865),
    "small.en": _dims(80, 768, 12, 12, 51864),
    "small": _dims(80, 768, 12, 12, 51865),
    "medium.en": _dims(80, 1024, 16, 24, 51864),
    "medium": _dims(80, 1024, 16, 24, 51865),
    "large-v3": _dims(128, 1280, 20, 32, 51866),
}
