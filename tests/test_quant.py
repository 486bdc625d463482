"""GGUF Q4_0 in numpy (`maxwhisper.quant`): the block format as llama.cpp writes it, and the arithmetic of
MAX's CPU `ops.qmatmul(Q4_0, ...)` reproduced bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from maxwhisper.quant import BLOCK_BYTES, q4_0_blocks, q4_0_matmul, q4_0_weights, q8_activations

pytestmark = pytest.mark.precision("q4_0")  # MAX's Q4_0 kernel is a CPU kernel


def test_one_block_by_hand():
    """Values -8..7 halved: the largest magnitude is -4.0, so d = 0.5 and each code is x / 0.5 + 8."""
    x = (np.arange(32) % 16 - 8).astype(np.float32) / 2
    b = q4_0_blocks(x[None])
    assert b.shape == (1, BLOCK_BYTES) and b.dtype == np.uint8
    assert b[0, :2].view(np.float16)[0] == np.float16(0.5)
    codes = np.arange(16, dtype=np.uint8)  # element j in byte j's low nibble, j + 16 in its high one
    np.testing.assert_array_equal(b[0, 2:], codes | (codes << 4))
    np.testing.assert_array_equal(q4_0_weights(b)[0], x)


def test_largest_magnitude_keeps_its_sign():
    """A block whose largest value is positive gets a negative scale; its code is 0, and code 15 is the cap."""
    x = np.zeros((1, 32), np.float32)
    x[0, 0], x[0, 1] = 8.0, -8.0 * 7 / 8  # positive max: d = -1, so 8 -> code 0, -7 -> code 15
    b = q4_0_blocks(x)
    assert b[0, :2].view(np.float16)[0] == np.float16(-1.0)
    np.testing.assert_array_equal(q4_0_weights(b)[0, :2], [8.0, -7.0])


def test_round_trip_error_is_half_a_step_but_at_the_cap():
    """Half a step d = max|x| / 8, plus the scale's float16 rounding; a full step where x / d > 7.5, whose
    code 16 is capped at 15 (the side opposite the largest magnitude)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 384)).astype(np.float32)
    x = w.reshape(64, -1, 32)
    at = np.abs(x).argmax(axis=2)[..., None]
    d = np.take_along_axis(x, at, axis=2) / -8  # signed, before float16 rounding
    err = np.abs(q4_0_weights(q4_0_blocks(w)).reshape(x.shape) - x)
    steps = np.where(x / d > 7.5, 1.0, 0.5)
    assert (err <= (steps + 8 * 2.0**-11) * np.abs(d) * (1 + 1e-6)).all()
    assert err.max() > 0.4 * np.abs(d).max()  # the check measures a real rounding


def test_activation_codes_reach_127_and_scale_back():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 64)).astype(np.float32)
    codes, scale = q8_activations(a)
    assert np.abs(codes).reshape(3, 2, 32).max(axis=2).tolist() == [[127, 127]] * 3
    np.testing.assert_allclose(codes.reshape(3, 2, 32) * scale[..., None], a.reshape(3, 2, 32),
                               atol=scale.max() / 2 * 1.001)


def test_zero_blocks_stay_zero():
    assert not q4_0_weights(q4_0_blocks(np.zeros((2, 64), np.float32))).any()
    assert not q4_0_matmul(np.zeros((1, 64), np.float32), q4_0_blocks(np.ones((32, 64), np.float32))).any()


def test_matmul_is_the_quantized_product():
    """To float32 rounding, the product of the dequantized activations and weights (float64)."""
    rng = np.random.default_rng(2)
    a, w = rng.standard_normal((5, 96)).astype(np.float32), rng.standard_normal((32, 96)).astype(np.float32)
    blocks = q4_0_blocks(w)
    codes, scale = q8_activations(a)
    deq_a = (codes.reshape(5, 3, 32) * scale[..., None].astype(np.float64)).reshape(5, 96)
    want = deq_a @ q4_0_weights(blocks).astype(np.float64).T
    np.testing.assert_allclose(q4_0_matmul(a, blocks), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("shape", [(3, 31), (3,), (2, 0)])
def test_bad_shapes_name_the_problem(shape):
    with pytest.raises(ValueError, match="multiple of 32"):
        q4_0_blocks(np.ones(shape, np.float32))
    with pytest.raises(ValueError, match="multiple of 32"):
        q8_activations(np.ones(shape, np.float32))


def test_non_finite_weights_are_refused():
    w = np.ones((1, 32), np.float32)
    w[0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        q4_0_blocks(w)


def test_max_qmatmul_is_q4_0_matmul_bit_for_bit():
    """MAX's CPU kernel against the numpy arithmetic, on activations of 1-7 rows (decoder steps, odd
    tails of a tile) and rows of very different sizes: every output bit equal. Without the fused
    multiply-add (two roundings), 32 of 64 outputs of one row differ by an ulp. A one-ulp change of
    one block's scale changes the outputs that read it."""
    from max.dtype import DType
    from max.graph import Graph, TensorType, ops
    from max.graph.quantization import QuantizationEncoding

    from maxwhisper.runtime import Compiled, device_ref

    k, n = 384, 64
    ref = device_ref("cpu")
    types = [TensorType(DType.float32, ["m", k], ref), TensorType(DType.uint8, [n, k // 32 * BLOCK_BYTES], ref)]
    with Graph("q4_0_matmul", input_types=types) as g:
        g.output(ops.qmatmul(QuantizationEncoding.Q4_0, None, g.inputs[0].tensor, g.inputs[1].tensor))
    model = Compiled(g, "cpu")
    rng = np.random.default_rng(3)
    blocks = q4_0_blocks(rng.standard_normal((n, k)).astype(np.float32) * 0.05)
    for m in (1, 2, 3, 7):
        a = (rng.standard_normal((m, k)) * np.exp(rng.uniform(-4, 4, (m, 1)))).astype(np.float32)
        got = model(a, blocks)[0]
        np.testing.assert_array_equal(got, q4_0_matmul(a, blocks), err_msg=f"{m} rows")
    bumped = blocks.copy()
    bumped[5, :2] = (bumped[5, :2].view(np.uint16) + np.uint16(1)).view(np.uint8)  # its magnitude one ulp up
    moved = q4_0_matmul(a, bumped) != q4_0_matmul(a, blocks)
    assert moved[:, 5].all() and not moved[:, [c for c in range(n) if c != 5]].any()
    np.testing.assert_array_equal(model(a, bumped)[0], q4_0_matmul(a, bumped))
