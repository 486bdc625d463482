"""GGUF Q4_0 weights and the arithmetic of MAX's CPU `ops.qmatmul(Q4_0, ...)`, in numpy.

Q4_0 stores a weight row in blocks of 32: a float16 scale `d` and 32 four-bit codes `q` (0..15), the
value being `d * (q - 8)`; element j of a block sits in the low nibble of byte j, element j + 16 in its
high nibble. Blocks are quantized as llama.cpp's reference does (`quantize_row_q4_0_ref`): `d` is the
block's value of largest magnitude, sign kept, over -8, and `q = min(15, trunc(x / d + 8.5))`.

MAX's kernel (Modular's `quantization/qmatmul.mojo`) also quantizes the activations: each row's
blocks of 32 along K to int8 with a float32 scale `max|a| / 127`, codes `roundeven(a * (127 / max|a|))`;
then per block an exact integer dot product, and over blocks in K order a float32 sum of
`(dot * a_scale) * d`, the multiply by `d` and the add fused (one rounding: the kernel's FMA; measured,
`tests/test_quant.py`). `q4_0_matmul` does that arithmetic step for step, so a MAX graph can be compared
with it bit for bit, and PyTorch (float32 or float64) can run the same quantized arithmetic as a yardstick.
"""

from __future__ import annotations

import numpy as np

BLOCK = 32
BLOCK_BYTES = 2 + BLOCK // 2  # a float16 scale, then 16 bytes of codes


def _check(w: np.ndarray, what: str) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != 2 or w.shape[1] % BLOCK or not w.shape[1]:
        raise ValueError(f"{what} must be 2-D with a last dim a positive multiple of {BLOCK}, got shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    return np.ascontiguousarray(w, np.float32)


def q4_0_blocks(w: np.ndarray) -> np.ndarray:
    """(N, K) float32 weights (a Linear's `weight`: out x in) as (N, K // 32 * 18) uint8 GGUF Q4_0 blocks."""
    w = _check(w, "weights")
    n, k = w.shape
    x = w.reshape(n, k // BLOCK, BLOCK)
    at = np.abs(x).argmax(axis=2)[..., None]
    d = (np.take_along_axis(x, at, axis=2)[..., 0] / np.float32(-8)).astype(np.float32)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    q = np.minimum(15, (x * inv[..., None] + np.float32(8.5)).astype(np.int8)).astype(np.uint8)
    out = np.empty((n, k // BLOCK, BLOCK_BYTES), np.uint8)
    out[..., :2] = d.astype(np.float16)[..., None].view(np.uint8)
    out[..., 2:] = q[..., :16] | (q[..., 16:] << 4)
    return out.reshape(n, -1)


def _codes(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scales (N, K/32) float32, codes minus 8 (N, K/32, 32) int8) of Q4_0 `blocks`."""
    blocks = np.asarray(blocks, np.uint8)
    if blocks.ndim != 2 or blocks.shape[1] % BLOCK_BYTES:
        raise ValueError(f"Q4_0 blocks must be (N, K / 32 * {BLOCK_BYTES}) uint8, got shape {blocks.shape}")
    b = blocks.reshape(blocks.shape[0], -1, BLOCK_BYTES)
    d = np.ascontiguousarray(b[..., :2]).view(np.float16)[..., 0].astype(np.float32)
    packed = b[..., 2:]
    q = np.concatenate([packed & 15, packed >> 4], axis=2).astype(np.int8) - 8
    return d, q


def q4_0_weights(blocks: np.ndarray) -> np.ndarray:
    """The (N, K) float32 weights Q4_0 `blocks` stand for (exact: a float16 times a small integer)."""
    d, q = _codes(blocks)
    return (d[..., None] * q).reshape(d.shape[0], -1)


def q8_activations(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MAX's quantization of the left operand: (codes (M, K) int8, scales (M, K/32) float32)."""
    a = _check(a, "activations")
    x = a.reshape(a.shape[0], -1, BLOCK)
    top = np.abs(x).max(axis=2)
    scale = (top / np.float32(127)).astype(np.float32)
    mult = np.divide(np.float32(127), top, out=np.zeros_like(top), where=top != 0)
    return np.rint(x * mult[..., None]).astype(np.int8).reshape(a.shape), scale


def q4_0_matmul(a: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """(M, K) float32 activations times Q4_0 `blocks` (N, ...) transposed: (M, N) float32, as MAX's CPU
    kernel computes it (see the module's docstring)."""
    codes, a_scale = q8_activations(a)
    d, q = _codes(blocks)
    m, k = codes.shape
    if q.shape[1] * BLOCK != k:
        raise ValueError(f"activations have K = {k}, the blocks {q.shape[1] * BLOCK}")
    xa = codes.reshape(m, -1, BLOCK).astype(np.int32)
    out = np.zeros((m, d.shape[0]), np.float32)
    for g in range(q.shape[1]):  # blocks in K order
        p = xa[:, g] @ q[:, g].astype(np.int32).T
        p = p.astype(np.float32) * a_scale[:, g, None]
        # the FMA: p * d is exact in float64; the add rounds there first (a double rounding, whose
        # odds of differing from one rounding are about 2^-29 per add)
        out = (p.astype(np.float64) * d[None, :, g] + out).astype(np.float32)
    return out


def eligible(key: str, shape) -> bool:
    """A parameter a Q4_0 product can multiply: a 2-D `weight` (out x in) whose K is a multiple of 32
    (every Linear of Whisper and its tied token embedding; not the conv stem's 3-D filters)."""
    return key.endswith("weight") and len(shape) == 2 and shape[1] % BLOCK == 0 and shape[1] > 0


def padded_rows(n: int) -> int:
    """Rows of a weight's blocks as MAX's kernel takes them: N a multiple of 32 (its weight repacking
    says "N must be a multiple of 32"; tiny.en's vocabulary is 51864 = 1620.75 x 32)."""
    return -(-n // BLOCK) * BLOCK


def with_blocks(weights, quantizes) -> dict:
    """`weights` (state-dict key -> float32 array) plus, for each eligible weight `quantizes(key)` selects,
    its Q4_0 blocks under `key + precision.QUANT_KEY`, zero rows appended up to `padded_rows`."""
    from maxwhisper.precision import QUANT_KEY

    out = dict(weights)
    for k, v in weights.items():
        if eligible(k, np.shape(v)) and quantizes(k):
            b = q4_0_blocks(v)
            out[k + QUANT_KEY] = np.pad(b, [(0, padded_rows(len(b)) - len(b)), (0, 0)])
    return out


def with_quantized(weights, quantizer) -> dict:
    """`weights` plus the packed weights `quantizer` (`precision.Quantizer`) asks for: Q4_0 blocks or int8 codes."""
    if quantizer is None:
        return dict(weights)
    if quantizer.scheme == "int8":
        from maxwhisper.int8 import with_codes

        return with_codes(weights, quantizer)
    return with_blocks(weights, quantizer)
