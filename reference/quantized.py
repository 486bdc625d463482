"""The reference side of a quantized precision: openai-whisper's modules with MAX's Q4_0 or int8 arithmetic.

In a quantized precision (`precision.Row.quantized`) a selected Linear (and the logits' `x @ E.T`)
multiplies GGUF Q4_0 weights by activations quantized to int8 per block of 32 along K, as MAX's CPU
`qmatmul` does (`maxwhisper.quant`, shown bit-exact there). Both quantizations belong to the precision,
not to an implementation, so the reference and the yardstick apply them too: the weights are the
dequantized blocks of the float32 master weights (exact in float32 and float64), and an activation is
quantized from its float32 value with float32 arithmetic (the quantizer MAX runs). Only the product
differs: exact-ish in float64 (the reference), PyTorch float32 (the yardstick), integer dots summed in
float32 (MAX). One consequence: where an upstream float32 error moves an activation across a rounding
boundary of its code, the code differs by one (docs/precision.md: why the one-layer records feed a
quantized product only the record's own input).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from maxwhisper.int8 import eligible as int8_eligible
from maxwhisper.int8 import quantize
from maxwhisper.quant import BLOCK, eligible, q4_0_blocks, q4_0_weights

_MATMULS = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__)


def q8(a: torch.Tensor) -> torch.Tensor:
    """`a` (..., K) as MAX's kernel quantizes it, dequantized in `a`'s dtype: per block of 32 along K,
    codes round-half-even(x * (127 / max|x|)) and scale max|x| / 127, both in float32 from float32 x."""
    x = a.float().reshape(*a.shape[:-1], a.shape[-1] // BLOCK, BLOCK)
    top = x.abs().amax(-1, keepdim=True)
    # a true division: `127 / top` is torch's __rtruediv__, reciprocal(top) * 127, an ulp off at times
    mult = torch.where(top != 0, torch.full_like(top, 127) / top, torch.zeros_like(top))
    codes = torch.round(x * mult)
    return (codes.to(a.dtype) * (top / 127).to(a.dtype)).reshape(a.shape)


def dequantized(w: np.ndarray) -> np.ndarray:
    """float32 weights (N, K) as their Q4_0 blocks stand for them (exact in float32 and float64)."""
    return q4_0_weights(q4_0_blocks(np.asarray(w, np.float32)))


class Q4_0Products(TorchFunctionMode):
    """Within the mode, the selected weights' products of `module` are Q4_0's: F.linear (every Linear)
    and the logits' matmul through the transposed token embedding. `calls` counts them."""

    eligible, dequantize, activations = staticmethod(eligible), staticmethod(dequantized), staticmethod(q8)

    def __init__(self, module: nn.Module, quantizes: Callable[[str], bool], prefix: str = ""):
        super().__init__()
        self.calls, self.weights = 0, {}
        for name, p in module.named_parameters():
            if self.eligible(name, p.shape) and quantizes(prefix + name):
                self.weights[id(p)] = torch.from_numpy(self.dequantize(p.detach().cpu().float().numpy())).to(p.device)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and id(args[1]) in self.weights:
            self.calls += 1
            return func(self.activations(args[0]), self.weights[id(args[1])].to(args[0].dtype), *args[2:], **kwargs)
        if func in _MATMULS and getattr(args[1], "_base", None) is not None and id(args[1]._base) in self.weights:
            self.calls += 1  # x @ E.T, E a selected weight: whisper's logits
            w = self.weights[id(args[1]._base)].to(args[0].dtype)
            return func(self.activations(args[0]), w.T, *args[2:], **kwargs)
        return func(*args, **kwargs)


def int8_rows(a: torch.Tensor) -> torch.Tensor:
    """`a` (..., K) as MAX's int8 product quantizes it (`maxwhisper.int8.quantize`), dequantized in `a`'s
    dtype: per row, codes round-half-even(x * (127 / max|x|)) within +-127 and scale max|x| / 127, both in
    float32 from float32 x; in float64 codes times scale is exact."""
    x = a.float()
    top = x.abs().amax(-1, keepdim=True)
    mult = torch.where(top != 0, torch.full_like(top, 127) / top, torch.zeros_like(top))  # a true division
    codes = torch.clamp(torch.round(x * mult), -127, 127)
    return codes.to(a.dtype) * (top / 127).to(a.dtype)


def int8_dequantized(w: np.ndarray) -> np.ndarray:
    """float64 weights (N, K) as their int8 codes and scales stand for them (exact in float64, not float32)."""
    codes, scale = quantize(np.asarray(w, np.float32))
    return codes.astype(np.float64) * scale.astype(np.float64)[:, None]


class Int8Products(Q4_0Products):
    """As Q4_0Products, with int8's codes: weights per output channel, activations per row."""

    eligible, dequantize, activations = staticmethod(int8_eligible), staticmethod(int8_dequantized), staticmethod(int8_rows)


def products(scheme: str):
    """The mode class of a quantized scheme (`precision.Quantizer.scheme`)."""
    return {"q4_0": Q4_0Products, "int8": Int8Products}[scheme]
