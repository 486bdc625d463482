"""Comparing a MAX activation with its reference: one measure, one report, one assert."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """Bound on every element: |actual - expected| <= atol + rtol * max |expected| over its row.

    The row (last axis: a frame's channels) sets the scale because float32 error in a matmul or a
    normalization grows with the magnitude of the whole vector, not of the one element: on real
    speech tiny.en's block 3 has frames whose channels reach 600, and every channel of such a frame
    carries an error of ~1e-2 while a tiny element in it may be 1e-2 itself.
    """

    atol: float
    rtol: float

    def __str__(self) -> str:
        return f"atol={self.atol:.0e} rtol={self.rtol:.0e}"


@dataclass
class Comparison:
    layer: str
    shape: tuple[int, ...]
    max_abs: float   # max |actual - expected|
    max_rel: float   # max of |actual - expected| / max |expected| over the element's row
    cosine: float    # cosine similarity of the flattened tensors
    worst_index: tuple[int, ...]
    tolerance: Tolerance
    passed: bool
    pairs: list[tuple[tuple[int, ...], float, float]]  # (index, expected, actual), worst first
    problem: str = ""  # a shape / dtype / non-finite failure, stated before any value is compared

    def row(self) -> dict:
        d = asdict(self)
        d["tolerance"] = asdict(self.tolerance)
        d["status"] = "ok" if self.passed else "FAIL"
        return d

    def report(self) -> str:
        head = f"{self.layer}: {'ok' if self.passed else 'FAIL'} shape={self.shape}"
        if self.problem:
            return f"{head}: {self.problem}"
        lines = [f"{head} max_abs={self.max_abs:.3e} max_rel={self.max_rel:.3e} "
                 f"cosine={self.cosine:.9f} tolerance({self.tolerance}) worst at {self.worst_index}"]
        lines += [f"    at {i}: expected {e:+.8e} actual {a:+.8e} diff {a - e:+.3e}"
                  for i, e, a in self.pairs]
        return "\n".join(lines)


def compare(layer: str, actual: np.ndarray, expected: np.ndarray, tol: Tolerance,
            n_pairs: int = 4) -> Comparison:
    actual, expected = np.asarray(actual), np.asarray(expected)
    fail = dict(max_abs=float("inf"), max_rel=float("inf"), cosine=float("nan"), worst_index=(),
                tolerance=tol, passed=False, pairs=[])
    if actual.shape != expected.shape:
        return Comparison(layer, actual.shape, **fail,
                          problem=f"shape {actual.shape} != expected {expected.shape}")
    if not np.issubdtype(actual.dtype, np.floating):
        return Comparison(layer, actual.shape, **fail, problem=f"dtype {actual.dtype} is not floating")
    for side, arr in (("actual", actual), ("expected", expected)):
        if not np.isfinite(arr).all():
            return Comparison(layer, actual.shape, **fail,
                              problem=f"{side} holds {int((~np.isfinite(arr)).sum())} NaN/inf values")
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    diff = np.abs(a - e)
    if diff.size == 0:
        return Comparison(layer, actual.shape, 0.0, 0.0, 1.0, (), tol, True, [])
    row_scale = np.abs(e).max(axis=-1, keepdims=True) if e.ndim else np.abs(e)
    over = diff - (tol.atol + tol.rtol * row_scale)
    worst = np.unravel_index(int(np.argmax(over)), diff.shape)
    order = np.argsort(over, axis=None)[::-1][:n_pairs]
    pairs = [(tuple(int(i) for i in np.unravel_index(j, diff.shape)),
              float(e.flat[j]), float(a.flat[j])) for j in order]
    denom = np.linalg.norm(a) * np.linalg.norm(e)
    cosine = float(np.dot(a.ravel(), e.ravel()) / denom) if denom > 0 else float(np.array_equal(a, e))
    max_rel = float((diff / np.maximum(row_scale, np.finfo(np.float64).tiny)).max())
    return Comparison(layer, actual.shape, float(diff.max()), max_rel, cosine, tuple(int(i) for i in worst), tol, bool((over <= 0).all()), pairs)


def assert_parity(layer: str, actual: np.ndarray, expected: np.ndarray, tol: Tolerance) -> Comparison:
    c = compare(layer, actual, expected, tol)
    if not c.passed:
        raise AssertionError(c.report())
    return c


def compare_traces(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray],
                   tolerance_of: Callable[[str], Tolerance]) -> list[Comparison]:
    """Compare two traces layer by layer, in `actual`'s (execution) order.

    A layer id on one side only is a failure: a trace that silently loses a layer proves nothing.
    """
    out = []
    for layer in list(actual) + [k for k in expected if k not in actual]:
        if layer not in expected or layer not in actual:
            side = "reference" if layer not in expected else "MAX"
            shape = np.shape(actual.get(layer, expected.get(layer)))
            out.append(Comparison(layer, shape, float("inf"), float("inf"), float("nan"), (),
                                  tolerance_of(layer), False, [], problem=f"missing from the {side} trace"))
            continue
        out.append(compare(layer, actual[layer], expected[layer], tolerance_of(layer)))
    return out


def first_failure(comparisons: list[Comparison]) -> Comparison | None:
    return next((c for c in comparisons if not c.passed), None)


def format_table(comparisons: list[Comparison]) -> str:
    rows = [("layer", "shape", "max abs err", "max rel err", "cosine", "tolerance", "status")]
    rows += [(c.layer, "x".join(map(str, c.shape)), f"{c.max_abs:.2e}", f"{c.max_rel:.2e}",
              f"{c.cosine:.9f}", str(c.tolerance), "ok" if c.passed else "FAIL") for c in comparisons]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)
