"""float32 in plain sequential summation order: what a correct but unblocked kernel computes.

PyTorch's CPU kernels sum in cascades (pairwise), MAX's in vector lanes, another CPU's in another
order: all correctly rounded, each with its own error. The derived rule's yardstick is PyTorch's error,
so a kernel that sums in a different, equally valid order could exceed it on inputs where the order
matters (long sums over large offsets). Where a record has a sequential form here, the rule judges
against the larger of the two errors (`judge.judge`'s `order`): any correctly rounded order passes.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def _sum_last(x: np.ndarray) -> np.ndarray:
    """Sum over the last axis, one element after another, rounding to float32 at each add."""
    total = np.zeros(x.shape[:-1], F32)
    for k in range(x.shape[-1]):
        total = (total + x[..., k]).astype(F32)
    return total


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """torch.nn.LayerNorm's two passes (mean, then the centered variance), each a sequential float32 sum."""
    x = np.asarray(x, F32)
    n = F32(x.shape[-1])
    mean = (_sum_last(x) / n)[..., None].astype(F32)
    centered = (x - mean).astype(F32)
    var = (_sum_last((centered * centered).astype(F32)) / n)[..., None].astype(F32)
    inv = (F32(1) / np.sqrt((var + F32(eps)).astype(F32))).astype(F32)
    return ((centered * inv).astype(F32) * np.asarray(weight, F32) + np.asarray(bias, F32)).astype(F32)
