"""The derived rule: MAX's error against float64, in units of PyTorch's own error in the same dtype.

Anchor: PyTorch's compiler accuracy check (`torch._dynamo.utils.same(..., fp64_ref=...)`) passes a
compiled result when its RMSE against a float64 run is at most 2x (3x for 16-bit types) eager mode's
RMSE against the same float64 run. This goes further in three ways:

- two figures, not one: a norm-wise one (RMS of the error over RMS of the reference: a uniform
  drift) and element-wise ones (a high quantile and the maximum of each element's error over its
  scale: one bad frame), each judged against the same figure of the yardstick;
- the element's scale depends on the layer: the RMS of its reference row where the layer mixes the
  row (a matmul, a normalization: float32 error grows with the whole vector), or |reference| itself
  for an element-wise layer (GELU), so that a large value elsewhere in the row buys a small one no
  slack. Conditioning needs no special case: where an op amplifies rounding by construction
  (LayerNorm of a near-constant row, softmax near one-hot), PyTorch in the same dtype is amplified
  alike, and the bound moves with it;
- a floor of a few units of the dtype's epsilon (in the same relative units), for where the
  yardstick is exact or nearly so.

The multiples are chosen once from measurements (see `registry.RULE` for the figures);
the same rule then serves every dtype and device: only the yardstick and epsilon change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maxwhisper.precision import PRECISIONS

# The floor's unit per precision (its row in `maxwhisper.precision`).
EPS = {name: r.eps for name, r in PRECISIONS.items()}


@dataclass(frozen=True)
class Rule:
    """MAX passes when each of its error figures is within `k` times the yardstick's plus a floor."""

    k_norm: float              # on RMS(error) / RMS(reference)
    k_quantile: float          # on the quantile of element errors
    k_max: float               # on the largest element error
    floor_eps: float = 4.0     # floor, in units of the dtype's epsilon (relative units)
    scale: str = "row"         # "row": RMS of the reference row; "element": |reference| + |input|
    quantile: float = 0.99

    def __str__(self) -> str:
        return f"{self.k_norm:g}/{self.k_quantile:g}/{self.k_max:g}x torch ({self.scale})"


@dataclass(frozen=True)
class Errors:
    """One producer's error figures against the float64 reference (relative units)."""

    norm: float          # RMS(error) / RMS(reference)
    quantile: float      # the rule's quantile of |error| / scale
    max: float           # max of |error| / scale
    worst: tuple[int, ...]

    def as_dict(self) -> dict:
        return dict(norm=self.norm, quantile=self.quantile, max=self.max)


def scaled_error(actual: np.ndarray, reference: np.ndarray, scale: str, x: np.ndarray | None = None) -> np.ndarray:
    """|actual - reference| / scale, element by element, in float64 (0 where the error is 0).

    "element" scales by |reference| + |x| when the layer's input `x` is given: an element-wise
    f(x) computed in floating point errs by about eps * (|f(x)| + |x f'(x)|), and for GELU
    |x f'(x)| <= 1.13 |x|, so where f(x) cancels to almost nothing (x < -4) the error is judged
    against |x| rather than against a value that rounding cannot resolve.
    """
    a, r = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    err = np.abs(a - r)
    if scale == "row":
        s = np.sqrt(np.mean(r * r, axis=-1, keepdims=True)) if r.ndim else np.abs(r)
    elif scale == "element":
        s = np.abs(r) + (np.abs(np.asarray(x, np.float64)) if x is not None else 0.0)
    else:
        raise ValueError(f"scale {scale!r}: expected 'row' or 'element'")
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(err == 0, 0.0, err / np.broadcast_to(s, err.shape))
    return out


def errors(actual: np.ndarray, reference: np.ndarray, rule: Rule, x: np.ndarray | None = None,
           scaled: np.ndarray | None = None) -> Errors:
    """The figures of `actual`; `scaled` is its `scaled_error`, when the caller already has it."""
    a, r = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    if a.size == 0:
        return Errors(0.0, 0.0, 0.0, ())
    rms_ref = float(np.sqrt(np.mean(r * r)))
    rms_err = float(np.sqrt(np.mean((a - r) ** 2)))
    norm = rms_err / rms_ref if rms_ref > 0 else (0.0 if rms_err == 0 else float("inf"))
    e = scaled_error(a, r, rule.scale, x) if scaled is None else scaled
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(e)), e.shape))
    return Errors(norm, float(np.quantile(e, rule.quantile)), float(e.max()), worst)


@dataclass(frozen=True)
class Verdict:
    passed: bool
    max_errors: Errors           # MAX against float64
    yardstick: Errors            # PyTorch in the same dtype against float64
    bounds: dict                 # figure -> the bound MAX's figure had to meet
    ratios: dict                 # figure -> MAX figure / yardstick figure (inf where the yardstick is 0)
    needed: dict                 # figure -> the smallest k that would have passed it
    failed: tuple[str, ...]      # the figures over their bound
    order: Errors | None = None  # a sequential-order float32 computation's, where the record has one


def judge(actual: np.ndarray, yardstick: np.ndarray, reference: np.ndarray, rule: Rule,
          dtype: str = "float32", x: np.ndarray | None = None, scaled: np.ndarray | None = None,
          order: np.ndarray | None = None) -> Verdict:
    """Judge `actual` (MAX) by `yardstick` (PyTorch, same dtype), both against `reference` (float64);
    `x` is the layer's input, for an element-scaled rule; `scaled`, `actual`'s scaled error if known.
    With `order` (float32 summed in sequential order, `reference.sequential`), each figure's unit is
    the larger of the two errors: a kernel summing in any correctly rounded order passes."""
    if dtype not in EPS:
        raise ValueError(f"dtype {dtype!r}: expected one of {sorted(EPS)}")
    floor = rule.floor_eps * EPS[dtype]
    m, t = errors(actual, reference, rule, x, scaled), errors(yardstick, reference, rule, x)
    o = errors(order, reference, rule, x) if order is not None else None
    if o is not None:
        t = Errors(max(t.norm, o.norm), max(t.quantile, o.quantile), max(t.max, o.max), t.worst)
    ks = {"norm": rule.k_norm, "quantile": rule.k_quantile, "max": rule.k_max}
    bounds = {f: ks[f] * getattr(t, f) + floor for f in ks}
    ratios = {f: (getattr(m, f) / getattr(t, f)) if getattr(t, f) > 0 else
              (0.0 if getattr(m, f) == 0 else float("inf")) for f in ks}
    failed = tuple(f for f in ks if not getattr(m, f) <= bounds[f])  # NaN fails
    need = {f: max(getattr(m, f) - floor, 0.0) / getattr(t, f) if getattr(t, f) > 0 else
            (0.0 if getattr(m, f) <= floor else float("inf")) for f in ks}
    return Verdict(not failed, m, t, bounds, ratios, need, failed, o)
