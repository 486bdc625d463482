"""Whisper checkpoints, every form users have, turned into one in-memory form (`state`): openai-whisper
`.pt` (`pt`), CTranslate2 / faster-whisper models (`ct2`: a folder holding `model.bin`, or the file),
Hugging Face transformers folders (`hf`) and, by name (`names`), the embedded tiny.en, openai-whisper's
downloads and Hub repos (`download`). Nothing is ever filled in with a random or default value.
"""

from __future__ import annotations

import os

import numpy as np
from whisper.model import ModelDimensions

from maxwhisper.checkpoints.ct2 import load_ct2
from maxwhisper.checkpoints.heads import alignment_heads, check_heads, set_heads
from maxwhisper.checkpoints.hf import is_checkpoint, load_hf
from maxwhisper.checkpoints.names import resolve
from maxwhisper.checkpoints.pt import load_pt
from maxwhisper.checkpoints.state import (WeightsError, check_state_dict, expected_shapes, to_torch_model,
                                          weights_hash)


def load_weights(name_or_path: str | os.PathLike = "tiny.en") -> tuple[ModelDimensions, dict[str, np.ndarray]]:
    """(dims, state dict) from a `.pt`, a CTranslate2 folder or model.bin, a transformers folder, a model
    name or a Hub id (`names.resolve`)."""
    p = resolve(name_or_path)
    if p.is_dir():
        if is_checkpoint(p):
            return load_hf(p)
        if not (p / "model.bin").is_file():
            raise WeightsError(f"{p}: directory has neither a CTranslate2 model.bin nor a transformers "
                               "config.json with model.safetensors or pytorch_model.bin")
        return load_ct2(p / "model.bin")
    if p.suffix == ".bin":
        return load_ct2(p)
    return load_pt(p)


__all__ = [
    "ModelDimensions", "WeightsError", "alignment_heads", "check_heads", "check_state_dict", "expected_shapes",
    "load_weights", "resolve", "set_heads", "to_torch_model", "weights_hash",
]
