"""The yardstick's numeric mode: PyTorch in a precision's storage dtype, its float32 products IEEE.

PyTorch's CUDA matmuls default to IEEE but its cuDNN convolutions to TF32 (`fp32_precision` "tf32"),
so a float32 yardstick on a GPU is IEEE only once this module says so. It uses the `fp32_precision`
API alone (torch 2.9+; the legacy `allow_tf32` flags are never touched in the same process).
The `tf32` yardstick truncates the operands of the products MAX's GPU computes in TF32
(`precision.TF32_PRODUCTS`: every Linear, the conv stem, the logits) exactly as `maxwhisper.tf32`
does in the graph, then multiplies in IEEE float32.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from maxwhisper.device import parse_device
from maxwhisper.precision import row

_BACKENDS = {"cuda matmul": lambda: torch.backends.cuda.matmul, "cudnn conv": lambda: torch.backends.cudnn.conv,
             "cpu matmul": lambda: torch.backends.mkldnn.matmul, "cpu conv": lambda: torch.backends.mkldnn.conv}


def ieee() -> None:
    """Every float32 matmul and convolution in IEEE mode on every backend, and 16-bit matmuls
    reduced in float32. The latter is a choice: cuBLAS may split a 16-bit reduction in 16-bit
    (`allow_*_reduced_precision_reduction`, on by default), which would widen the yardstick by a
    library heuristic rather than by the dtype; off, it matches the CPU policy (float32 accumulation)."""
    override = os.environ.get("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "")
    if override not in ("", "0"):
        raise ValueError(f"TORCH_ALLOW_TF32_CUBLAS_OVERRIDE={override} forces TF32 into the IEEE yardstick: unset it")
    for backend in _BACKENDS.values():
        backend().fp32_precision = "ieee"
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False


def tf32(t: torch.Tensor) -> torch.Tensor:
    """float32 `t` with the low 13 mantissa bits zeroed: the operand a tensor core reads."""
    if t.dtype != torch.float32:
        return t
    return (t.contiguous().view(torch.int32) & -8192).view(torch.float32)  # 0xFFFFE000


# `x @ w` reaches a function mode as TensorBase.matmul, not as __matmul__ (seen in torch 2.13)
_PRODUCTS = (F.linear, F.conv1d, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__)


class TF32Operands(TorchFunctionMode):
    """Linear, conv1d and matmul (the logits' `x @ E.T`) on TF32-truncated operands; SDPA, the attention
    core, is one call and stays IEEE, as `precision.TF32_PRODUCTS` marks it. `calls` counts the products."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _PRODUCTS:
            self.calls += 1
            args = (tf32(args[0]), tf32(args[1]), *args[2:])
        return func(*args, **kwargs)


@contextlib.contextmanager
def numerics(precision: str, module=None, prefix: str = ""):
    """PyTorch as the yardstick of `precision`: IEEE float32 products, plus the TF32 truncation for tf32,
    plus, for a quantized precision, its Q4_0 products in `module` (state-dict keys under `prefix`)."""
    ieee()
    with TF32Operands() if row(precision).yardstick == "tf32 operands" else contextlib.nullcontext():
        with quantized(precision, module, prefix):
            yield


def quantized(precision: str | None, module, prefix: str = ""):
    """The Q4_0 products of `precision` (nothing for an unquantized one) in `module`: in the reference
    (float64) and the yardstick alike, as the precision defines them (`reference.quantized`)."""
    from maxwhisper.precision import form

    if precision is None or not row(precision).quantized:
        return contextlib.nullcontext()
    from reference.quantized import products

    if module is None:
        raise ValueError(f"{precision}'s quantized products need the module they quantize")
    f = form(precision)
    return products(f.products)(module, f.quantizes, prefix)


def torch_dtype(precision: str) -> torch.dtype:
    """The yardstick's torch dtype: the precision's storage dtype (tf32 is stored as float32)."""
    return getattr(torch, row(precision).storage)


def describe(precision: str, device: str = "cpu") -> str:
    """The report header's yardstick line, read back from torch's flags."""
    ieee()
    d = parse_device(device)
    kinds = ("cuda matmul", "cudnn conv") if d.kind == "gpu" else ("cpu matmul", "cpu conv")
    flags = ", ".join(f"{k.split()[1]} {_BACKENDS[k]().fp32_precision}" for k in kinds)
    text = f"torch {torch.__version__} {d.torch}, {row(precision).storage}, {flags}"
    if row(precision).yardstick == "tf32 operands":
        text += ", Linear/conv/logits operands truncated to TF32"
    if row(precision).quantized:
        what = {"q4_0": "Q4_0 weights times int8 activations", "int8": "int8 weights times int8 activations per row"}
        text += f", {what[row(precision).products['cpu']]} (reference.quantized) in the quantized products"
    return text


_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def setup(dtype: torch.dtype | str, quantize: str | None = None):
    """(compute dtype, weights dtype, numeric context) of a reference run: float64 is the reference; a
    precision name (or its torch dtype) the yardstick, with float32 master weights as whisper keeps them.
    The context is a function of (the module run, its state-dict prefix). `quantize`: the quantized
    precision whose products the float64 reference computes (a quantized yardstick implies its own)."""
    if dtype == torch.float64:
        return torch.float64, torch.float64, lambda module, prefix="": quantized(quantize, module, prefix)
    name = _NAMES.get(dtype, dtype)
    if quantize not in (None, name):
        raise ValueError(f"the {name} yardstick cannot compute {quantize}'s quantized products")
    return torch_dtype(name), torch.float32, lambda module, prefix="": numerics(name, module, prefix)
