"""TF32 in a MAX graph: operands truncated as an NVIDIA tensor core reads them, and the 3xTF32 split.

An `mma ... .tf32` reads float32 bits and ignores the low 13 of the 23 mantissa bits (MAX 26.7 passes
float32 operands without a `cvt.rna`), so a TF32 operand is the float32 truncated toward zero to 11
significant bits. MAX's graph API has no bitcast, so `truncate` is exact float arithmetic: multiplications
by powers of two, comparisons, `where` and `floor`, each exact; no addition that a compiler could fuse
into an FMA.
"""

from __future__ import annotations

from collections.abc import Callable

from max.dtype import DType
from max.graph import TensorValue, ops

from maxwhisper.layers import matmul
from maxwhisper.precision import Form

# Exponent steps of the search for the power of two at or below |x|: 2^-126 * 2^(sum of the steps
# taken) spans every binade of float32, 2^-126 ... 2^127 (128 is taken as 64 twice: 2^128 overflows).
_STEPS = ((64, 64), (64,), (32,), (16,), (8,), (4,), (2,), (1,))


def truncate(x: TensorValue) -> TensorValue:
    """float32 `x` with the low 13 mantissa bits zeroed (toward zero; NaN and infinities kept)."""
    f32, dev = DType.float32, x.device
    c = lambda v: ops.constant(v, f32, dev)  # noqa: E731
    a = ops.abs(x)
    p, r = c(2.0**-126), c(2.0**127)  # p: the power of two at or below a; r = 2 / p (normal throughout)
    for step in _STEPS:
        cand, inv = p, r
        for e in step:
            cand, inv = cand * c(2.0**e), inv * c(2.0**-e)
        take = ops.greater_equal(a, cand)
        p, r = ops.where(take, cand, p), ops.where(take, inv, r)
    # a * r = 2a / p in [2, 4): times 2^9, 11 significant bits above the point; floor drops the rest.
    kept = ops.floor(a * r * c(2.0**9)) * c(2.0**-10) * p
    kept = ops.where(ops.is_inf(x), a, kept)
    return ops.where(ops.greater(c(0.0), x), -kept, kept)


def tf32_product(a: TensorValue, b: TensorValue) -> TensorValue:
    return truncate(a) @ truncate(b)


def split_product(a: TensorValue, b: TensorValue) -> TensorValue:
    """NVIDIA's 3xTF32: a = a_hi + a_lo (a_hi the TF32 truncation, a_lo the exact rest, itself read as
    TF32), and a_hi b_hi + a_hi b_lo + a_lo b_hi in float32, the small terms summed first. a_lo b_lo
    (2^-22 relative) is dropped, as in CUTLASS; the result is IEEE-grade float32."""
    a_hi, b_hi = truncate(a), truncate(b)
    a_lo, b_lo = truncate(a - a_hi), truncate(b - b_hi)
    return (a_lo @ b_hi + a_hi @ b_lo) + a_hi @ b_hi


def products(form: Form) -> Callable:
    """The `Scope.product` of a precision's form: the marked products truncated or split, every other
    product (and every product of a form that marks none) a plain matmul."""
    if not form.marked:
        return matmul
    how = {"tf32": tf32_product, "3xtf32": split_product}[form.products]

    def product(a: TensorValue, b: TensorValue, kind: str = "linear") -> TensorValue:
        return how(a, b) if kind in form.marked and a.dtype == DType.float32 else a @ b

    return product
