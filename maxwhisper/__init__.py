"""Whisper on Modular MAX Graph, verified layer by layer against openai-whisper's PyTorch model."""

from whisper.model import ModelDimensions

from maxwhisper.model import MaxWhisper, load_model

__all__ = ["MaxWhisper", "ModelDimensions", "load_model"]
