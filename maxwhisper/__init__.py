"""Whisper on Modular MAX Graph, verified layer by layer against openai-whisper's PyTorch model."""

__all__ = ["MaxWhisper", "ModelDimensions", "load_model"]


def __getattr__(name: str):
    # lazy: `import maxwhisper.precision` (and the MAX-free `reference` through it) must not load MAX
    if name in ("MaxWhisper", "load_model"):
        from maxwhisper import model

        return getattr(model, name)
    if name == "ModelDimensions":
        from whisper.model import ModelDimensions

        return ModelDimensions
    raise AttributeError(f"module 'maxwhisper' has no attribute {name!r}")
