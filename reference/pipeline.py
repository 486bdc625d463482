"""openai-whisper's own pipeline in a 16-bit precision on the CPU: the PyTorch side of the 16-bit
end-to-end comparisons.

openai-whisper cannot be asked for it: `transcribe(..., fp16=True)` on a CPU warns "FP16 is not
supported on CPU; using FP32 instead" and runs float32, and `DecodingOptions` has no bfloat16 (its
`_get_audio_features` returns, rather than raises, a TypeError for features of another dtype). Its
modules compute in 16 bits all the same when handed 16-bit activations (float32 master weights cast
by Linear and Conv1d, LayerNorm in float32: its `fp16=True` arithmetic on a GPU). So the encoder here
rounds the mel to the dtype and hands openai-whisper's loop float32 features (exact: widening), and
the decoder rounds them back before cross-attention; the loop itself runs as `fp16=False`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import whisper.model as wm
from torch import nn

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def _rounding(module: nn.Module, dtype: torch.dtype, argument: int) -> None:
    """Round `module`'s positional input `argument` to `dtype` on the way in, its output to float32 on
    the way out (hooks: the module stays openai-whisper's, which its loop reads `.blocks` of)."""

    def before(_, args):
        return (*args[:argument], args[argument].to(dtype), *args[argument + 1:])

    module.register_forward_pre_hook(before)
    module.register_forward_hook(lambda _, args, out: out.float())


def torch_pipeline(dims: wm.ModelDimensions, state_dict: Mapping[str, np.ndarray], dtype: str) -> wm.Whisper:
    """openai-whisper's model, float32 weights, computing in `dtype` ("bfloat16" or "float16")."""
    from maxwhisper.checkpoints import to_torch_model

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: a 16-bit PyTorch pipeline is one of {sorted(DTYPES)}")
    model = to_torch_model(dims, state_dict)
    _rounding(model.encoder, DTYPES[dtype], 0)  # the mel
    _rounding(model.decoder, DTYPES[dtype], 1)  # the audio features, before cross-attention
    return model
