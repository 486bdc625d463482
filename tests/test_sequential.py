"""The second yardstick's arithmetic (`reference.sequential`): float32 summed one term after another,
and reaching openai-whisper's own modules through the function mode."""

import numpy as np
import pytest
import torch
import whisper.model as wm
from torch.nn import functional as F

from reference import sequential as S
from reference.modules import precise

pytestmark = pytest.mark.gate  # the gate for encoder changes (tox -e gate): no transcription

BIG = 2.0**24  # float32's last integer step of 1: BIG + 1 rounds (to even) back to BIG


def test_matmul_sums_in_order():
    """Four ones after 2^24 are each lost; before it they add up: the sum runs k = 0, 1, ... in float32."""
    ones = torch.ones(1, 5)
    first, last = torch.tensor([[BIG], [1.0], [1.0], [1.0], [1.0]]), torch.tensor([[1.0], [1.0], [1.0], [1.0], [BIG]])
    assert S.matmul(ones, first).item() == BIG
    assert S.matmul(ones, last).item() == BIG + 4
    assert S.sum_last(first.T).item() == BIG and S.sum_last(last.T).item() == BIG + 4


def test_kernels_compute_what_torch_does():
    """Each kernel is the same function as PyTorch's (to float32 rounding), shapes and strides included."""
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 6, 11, generator=g), torch.randn(5, 6, 3, generator=g), torch.randn(5, generator=g)
    for stride in (1, 2):
        torch.testing.assert_close(S.conv1d(x, w, b, stride=stride, padding=1), F.conv1d(x, w, b, stride=stride, padding=1))
    q, k, v = (torch.randn(2, 3, 7, 4, generator=g) for _ in range(3))
    for causal in (False, True):
        torch.testing.assert_close(S.attention(q, k, v, is_causal=causal), F.scaled_dot_product_attention(q, k, v, is_causal=causal))
    y, lw, lb = torch.randn(3, 8, generator=g) * 50 + 1000, torch.randn(8, generator=g), torch.randn(8, generator=g)
    torch.testing.assert_close(S.layer_norm(y, (8,), lw, lb), F.layer_norm(y, (8,), lw, lb), rtol=1e-4, atol=1e-4)


def test_mode_reaches_whispers_modules():
    """Under `SequentialOrder` whisper's block computes with these kernels (its result changes bits)
    and still the same function (float64 within float32 error)."""
    torch.manual_seed(0)
    block = wm.ResidualAttentionBlock(64, 4).eval()
    x = torch.randn(1, 300, 64)
    with torch.no_grad():
        plain = block(x)
        with S.SequentialOrder():
            ordered = block(x)
        exact = precise(wm.ResidualAttentionBlock(64, 4))  # whisper's LayerNorm would cast float64 to float32
        exact.load_state_dict(block.state_dict())
        exact = exact.double().eval()(x.double())
    assert not torch.equal(plain, ordered)
    torch.testing.assert_close(ordered.double(), exact, rtol=1e-4, atol=1e-4)


def _scalar_matmul(a, b):
    """The definition for 2-d a, b, one float32 scalar at a time: numpy rounds each product and each add."""
    a, b = a.numpy(), b.numpy()
    out = np.zeros((a.shape[0], b.shape[1]), dtype=np.float32)
    for m, n in np.ndindex(out.shape):
        for k in range(a.shape[1]):
            out[m, n] = np.float32(out[m, n] + np.float32(a[m, k] * b[k, n]))
    return torch.from_numpy(out)


def test_matmul_is_the_scalar_loop_bit_for_bit():
    """On views as whisper passes them (a Linear's weight.T, attention's k.transpose, batch dims),
    every output equals the scalar loop's: the layout the fast path copies to changes no bit."""
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(2, 5, 7, generator=g), torch.randn(3, 7, generator=g)
    assert torch.equal(S.matmul(x, w.T), torch.stack([_scalar_matmul(x[i], w.T) for i in range(2)]))
    q, k = torch.randn(2, 3, 4, 6, generator=g), torch.randn(2, 3, 5, 6, generator=g)
    want = torch.stack([torch.stack([_scalar_matmul(q[i, h], k[i, h].T) for h in range(3)]) for i in range(2)])
    assert torch.equal(S.matmul(q, k.transpose(-2, -1)), want)
    s = torch.randn(2, 3, 9, generator=g) * 1e3
    want = torch.from_numpy(np.add.accumulate(s.numpy(), axis=-1, dtype=np.float32)[..., -1])
    assert torch.equal(S.sum_last(s.transpose(0, 1)), want.transpose(0, 1))
