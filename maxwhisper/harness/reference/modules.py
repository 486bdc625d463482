"""Reference layers: openai-whisper's own modules, one per MAX layer, runnable in float64.

The reference is the more precise side of every comparison. openai-whisper's `LayerNorm` casts to
float32 and its non-SDPA attention casts scores to float32, so in float64 we swap in a LayerNorm that
keeps the input dtype and require the SDPA path; everything else is whisper's code unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import whisper.model as wm
from torch import nn
from torch.nn import functional as F

if not wm.SDPA_AVAILABLE:  # the fallback path rounds attention scores to float32
    raise ImportError("reference needs torch.nn.functional.scaled_dot_product_attention")


class LayerNorm(wm.LayerNorm):
    """openai-whisper's LayerNorm (float32 compute for float16 input) that leaves float64 alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float64:
            return nn.LayerNorm.forward(self, x)
        return super().forward(x)


def precise(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if isinstance(m, wm.LayerNorm):
            m.__class__ = LayerNorm  # same parameters, same state-dict keys
    return module


class ConvStem(nn.Module):
    """AudioEncoder's first two lines: gelu(conv1), gelu(conv2), output channels-last."""

    def __init__(self, n_mels: int, n_state: int):
        super().__init__()
        self.conv1 = wm.Conv1d(n_mels, n_state, kernel_size=3, padding=1)
        self.conv2 = wm.Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.conv2(F.gelu(self.conv1(mel)))).permute(0, 2, 1)


class SelfAttention(wm.MultiHeadAttention):
    """MultiHeadAttention without the second (qk) output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[0]


def conv_stem(dims: wm.ModelDimensions) -> nn.Module:
    return ConvStem(dims.n_mels, dims.n_audio_state)


def gelu(dims: wm.ModelDimensions) -> nn.Module:
    return nn.GELU()


def layer_norm(dims: wm.ModelDimensions) -> nn.Module:
    return precise(wm.LayerNorm(dims.n_audio_state))


def attention(dims: wm.ModelDimensions) -> nn.Module:
    return SelfAttention(dims.n_audio_state, dims.n_audio_head)


def mlp(dims: wm.ModelDimensions) -> nn.Module:
    return wm.ResidualAttentionBlock(dims.n_audio_state, dims.n_audio_head).mlp


def block(dims: wm.ModelDimensions) -> nn.Module:
    return precise(wm.ResidualAttentionBlock(dims.n_audio_state, dims.n_audio_head))


def encoder(dims: wm.ModelDimensions) -> nn.Module:
    return precise(wm.AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state,
                                   dims.n_audio_head, dims.n_audio_layer))


def load(module: nn.Module, state_dict: Mapping[str, np.ndarray], prefix: str = "",
         dtype: torch.dtype = torch.float64) -> nn.Module:
    """Load `prefix`-scoped numpy weights strictly (a missing or extra key raises) and cast."""
    own = {k[len(prefix):]: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()
           if k.startswith(prefix)}
    module.load_state_dict(own, strict=True)
    return module.to(dtype).eval()


def reference_encoder(dims: wm.ModelDimensions, state_dict: Mapping[str, np.ndarray],
                      dtype: torch.dtype = torch.float64) -> wm.AudioEncoder:
    return load(encoder(dims), state_dict, "encoder.", dtype)
