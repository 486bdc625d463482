"""The int8 product in a MAX graph (`maxwhisper.int8` is its arithmetic in numpy, bit for bit): three
seams, so a test can put a bug in each step (`tests/test_int8.py`)."""

from __future__ import annotations

from max.dtype import DType
from max.graph import TensorType, TensorValue, ops

from maxwhisper import int8
from maxwhisper.seams import seam


def product(x: TensorValue, codes: TensorValue, sums: TensorValue, scales: TensorValue) -> TensorValue:
    """float32 `x` (..., K) times a weight's int8 codes transposed (`maxwhisper.int8`, its arithmetic bit
    for bit): each row of `x` quantized, the codes' exact int32 product (the Mojo kernel), then scaled;
    the codes' padded rows are dropped."""
    x2 = ops.reshape(x, [-1, x.shape[-1]])
    q, top = quantize_rows(x2)
    acc, n = matmul(q, codes, sums), int(scales.shape[0])
    acc = acc if n == int(sums.shape[0]) else acc[:, :n]
    return ops.reshape(scaled(acc, top, scales), [*x.shape[:-1], n])


def _f32(v: float, x: TensorValue) -> TensorValue:
    return ops.constant(v, DType.float32, device=x.device)  # a float32 constant on x's device


@seam
def quantize_rows(rows: TensorValue) -> tuple[TensorValue, TensorValue]:
    """(codes int8, max|row| (M, 1)) of float32 rows: round-half-even(x * (127 / max|x|)), a zero row 0."""
    top = ops.max(ops.abs(rows), axis=-1)
    limit = _f32(127, rows)
    inv = ops.where(top > _f32(0, rows), limit / top, _f32(0, rows))
    return ops.cast(ops.min(ops.max(ops.round(rows * inv), -limit), limit), DType.int8), top


@seam
def matmul(q: TensorValue, codes: TensorValue, sums: TensorValue) -> TensorValue:
    """The exact int32 product of int8 rows `q` (M, K) and packed codes (`int8.pack`): (M, padded N)."""
    return ops.custom("maxwhisper_int8_matmul", q.device, [q, codes, sums],
                      [TensorType(DType.int32, [q.shape[0], int(sums.shape[0])], q.device)],
                      parameters={"vnni": int8.path() == "vnni"})[0].tensor


@seam
def scaled(acc: TensorValue, top: TensorValue, scales: TensorValue) -> TensorValue:
    """(float32(acc) * the rows' scales max|x| * float32(1 / 127)) * the weight's scales: one rounding each
    (a bias added next fuses with the last product into one FMA)."""
    return (ops.cast(acc, DType.float32) * (top * _f32(float(int8.STEP), acc))) * scales
