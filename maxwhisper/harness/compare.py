"""Comparing a MAX activation with its reference: one measure, one report, one assert.

Two judges, either or both per comparison (a `Check`):
- the derived rule (`judge.Rule`): MAX's error against float64 within a multiple of PyTorch's own
  error in the same dtype against the same float64 run (the yardstick), norm-wise and element-wise;
- the absolute float32 guard (`Tolerance`), kept where it is still meaningful: real speech through
  tiny.en (golden, verify, the tiny.en traces), where it holds the project's 1e-4 target. A fixed
  target binds only where correct float32 arithmetic meets it: on an input where PyTorch float32 or
  the sequential order (the yardsticks) exceed it, the guard is void for that layer and says so
  (a long-form window of LibriSpeech: PyTorch float32 exceeds it at `encoder.blocks.3.mlp.0`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from maxwhisper.harness.judge import Rule, Verdict, judge, scaled_error


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


@dataclass(frozen=True)
class Check:
    """What a comparison is judged by: the derived rule (needs a yardstick), the absolute guard, or both."""

    rule: Rule | None = None
    guard: Tolerance | None = None
    dtype: str = "float32"

    def __str__(self) -> str:
        parts = ([str(self.rule)] if self.rule else []) + ([str(self.guard)] if self.guard else [])
        return " & ".join(parts) or "none"


@dataclass
class Comparison:
    layer: str
    shape: tuple[int, ...]
    max_abs: float   # max |actual - expected|
    max_rel: float   # max of |actual - expected| / max |expected| over the element's row
    cosine: float    # cosine similarity of the flattened tensors
    worst_index: tuple[int, ...]
    check: Check
    passed: bool
    pairs: list[tuple[tuple[int, ...], float, float]]  # (index, expected, actual), worst first
    problem: str = ""  # a shape / dtype / non-finite failure, stated before any value is compared
    verdict: Verdict | None = None      # the derived rule's figures, when it was applied
    guard_passed: bool | None = None    # the absolute guard's result, when it was applied
    guard_void: str = ""                # why the guard was not applied: a yardstick exceeds it here
    failed_by: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """ok | FAIL | shown (a row with no check: int8's chained rows, `harness.quantized`)."""
        if self.check.rule is None and self.check.guard is None and not self.problem:
            return "shown"
        return "ok" if self.passed else "FAIL"

    @property
    def ratios(self) -> dict:
        return self.verdict.ratios if self.verdict else {}

    def row(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("check", "verdict")}
        d["check"] = str(self.check)
        d["tolerance"] = asdict(self.check.guard) if self.check.guard else None
        if self.verdict:
            v = self.verdict
            d.update(max_errors=v.max_errors.as_dict(), torch_errors=v.yardstick.as_dict(), ratios=v.ratios,
                     needed_k=v.needed, bounds=v.bounds)
        d["status"] = self.status
        return d

    def report(self) -> str:
        head = f"{self.layer}: {'ok' if self.passed else 'FAIL'} shape={self.shape}"
        if self.problem:
            return f"{head}: {self.problem}"
        lines = [f"{head} max_abs={self.max_abs:.3e} max_rel={self.max_rel:.3e} cosine={self.cosine:.9f} "
                 f"worst at {self.worst_index}; judged by {self.check}"
                 + (f"; FAILED by {', '.join(self.failed_by)}" if self.failed_by else "")
                 + (f"; absolute guard void: {self.guard_void}" if self.guard_void else "")]
        if self.verdict:
            v = self.verdict
            lines += [f"    {f:8s} MAX {getattr(v.max_errors, f):.3e}  torch {getattr(v.yardstick, f):.3e}  "
                      f"ratio {v.ratios[f]:8.2f}  bound {v.bounds[f]:.3e}  k needed {v.needed[f]:.2f}"
                      for f in v.ratios]
        lines += [f"    at {i}: expected {e:+.8e} actual {a:+.8e} diff {a - e:+.3e}" for i, e, a in self.pairs]
        return "\n".join(lines)


def _failed(layer, shape, check, problem) -> Comparison:
    return Comparison(layer, shape, float("inf"), float("inf"), float("nan"), (), check, False, [],
                      problem=problem, failed_by=["shape/values"])


def compare(layer: str, actual: np.ndarray, expected: np.ndarray, check: Check,
            yardstick: np.ndarray | None = None, x: np.ndarray | None = None, n_pairs: int = 4,
            order: np.ndarray | None = None) -> Comparison:
    """Judge MAX's `actual` against the float64 `expected`; `yardstick` is PyTorch's result in the
    check's dtype (needed by a rule), `x` the layer's input (for an element-scaled rule), `order` a
    sequential-order float32 result (`judge.judge`)."""
    if check.rule is not None and yardstick is None:
        raise ValueError(f"{layer}: the derived rule needs PyTorch's same-dtype result as the yardstick")
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        return _failed(layer, actual.shape, check, f"shape {actual.shape} != expected {expected.shape}")
    if not np.issubdtype(actual.dtype, np.floating):
        return _failed(layer, actual.shape, check, f"dtype {actual.dtype} is not floating")
    for side, arr in (("actual", actual), ("expected", expected)):
        if not np.isfinite(arr).all():
            return _failed(layer, actual.shape, check, f"{side} holds {int((~np.isfinite(arr)).sum())} NaN/inf values")
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    diff = np.abs(a - e)
    if diff.size == 0:
        return Comparison(layer, actual.shape, 0.0, 0.0, 1.0, (), check, True, [])
    row_scale = np.abs(e).max(axis=-1, keepdims=True) if e.ndim else np.abs(e)
    failed_by, verdict, guard_ok, rank = [], None, None, diff  # rank: what "worst" means here
    void = ""
    if check.guard is not None:
        allowed = check.guard.atol + check.guard.rtol * row_scale
        void = next((f"{name} exceeds the guard here by {over:.2e}" for name, other in
                     (("PyTorch's same-precision result", yardstick), ("the sequential order", order)) if other is not None
                     for over in [float((np.abs(np.asarray(other, np.float64) - e) - allowed).max())] if over > 0), "")
    if check.guard is not None and not void:
        rank = diff - allowed
        guard_ok = bool((rank <= 0).all())
        if not guard_ok:
            failed_by.append(f"absolute guard ({check.guard})")
    if check.rule is not None:
        rank = scaled_error(a, e, check.rule.scale, x)  # computed once: the rule's figures use it too
        verdict = judge(a, yardstick, e, check.rule, check.dtype, x, scaled=rank, order=order)
        failed_by += [f"{f} ratio {verdict.ratios[f]:.1f} > k" for f in verdict.failed]
    worst = np.unravel_index(int(np.argmax(rank)), diff.shape)
    flat = rank.ravel()
    top = np.argpartition(flat, -min(n_pairs, flat.size))[-n_pairs:]  # no full sort of a 2M-element tensor
    order = top[np.argsort(flat[top])[::-1]]
    pairs = [(tuple(int(i) for i in np.unravel_index(j, diff.shape)), float(e.flat[j]), float(a.flat[j]))
             for j in order]
    denom = np.linalg.norm(a) * np.linalg.norm(e)
    cosine = float(np.dot(a.ravel(), e.ravel()) / denom) if denom > 0 else float(np.array_equal(a, e))
    max_rel = float((diff / np.maximum(row_scale, np.finfo(np.float64).tiny)).max())
    return Comparison(layer, actual.shape, float(diff.max()), max_rel, cosine, tuple(int(i) for i in worst), check,
                      not failed_by, pairs, verdict=verdict, guard_passed=guard_ok, guard_void=void, failed_by=failed_by)


def passed(c: Comparison) -> Comparison:
    """`c`, or an AssertionError with its report: the tests' assert."""
    if not c.passed:
        raise AssertionError(c.report())
    return c


def compare_traces(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray],
                   check_of: Callable[[str], Check], yardstick: Mapping[str, np.ndarray] | None = None,
                   input_of: Callable[[str], str | None] = lambda layer: None,
                   until_first_failure: bool = False,
                   order: Mapping[str, np.ndarray] | Callable[[], Mapping[str, np.ndarray]] | None = None
                   ) -> list[Comparison]:
    """Compare two traces layer by layer, in `actual`'s (execution) order; `yardstick` is PyTorch's
    trace in the same dtype, `order` a sequential-order float32 trace (`judge.judge`), or a function
    computing it only when a row fails against PyTorch's error alone (the larger unit only admits
    more, so a passing row's verdict is the same), `input_of` names the trace id holding a layer's input. With
    `until_first_failure`, the list ends at the first failing layer (all a localization needs).

    A layer id on one side only is a failure: a trace that silently loses a layer proves nothing.
    """
    out, ordered = [], order if order is None or isinstance(order, Mapping) else None
    for layer in list(actual) + [k for k in expected if k not in actual]:
        if layer not in expected or layer not in actual:
            side = "reference" if layer not in expected else "MAX"
            out.append(_failed(layer, np.shape(actual.get(layer, expected.get(layer))), check_of(layer),
                               f"missing from the {side} trace"))
            continue
        src = input_of(layer)
        args = (layer, actual[layer], expected[layer], check_of(layer), None if yardstick is None else yardstick[layer],
                expected[src] if src else None)
        out.append(compare(*args, order=None if ordered is None else ordered[layer]))
        if not out[-1].passed and ordered is None and order is not None and out[-1].verdict is not None:
            ordered = order()  # from here on every row also has the sequential order's unit
            out[-1] = compare(*args, order=ordered[layer])
        if until_first_failure and not out[-1].passed:
            break
    return out


FIGURES = {"norm": "k_norm", "quantile": "k_quantile", "max": "k_max"}


def margins(comparisons: list[Comparison]) -> dict[str, tuple[float, float, str]]:
    """figure -> (margin, ratio, layer): the row with the least headroom under the derived rule, its
    k over its ratio (1 is at the bound); the rule's margin on this machine, rows without it left out."""
    out = {}
    for c in comparisons:
        for f, k in FIGURES.items() if c.verdict else ():
            ratio = c.verdict.ratios[f]
            margin = getattr(c.check.rule, k) / ratio if ratio > 0 else float("inf")
            if f not in out or margin < out[f][0]:
                out[f] = (margin, ratio, c.layer)
    return out


FIGURE_NAMES = {"norm": "rms", "quantile": "q99", "max": "max"}


def margins_row(comparisons: list[Comparison]) -> dict:
    """`margins` as JSON: figure -> {margin, ratio, layer}."""
    return {f: dict(margin=m, ratio=r, layer=layer) for f, (m, r, layer) in margins(comparisons).items()}


def format_margins(comparisons: list[Comparison]) -> str:
    return "   ".join(f"{FIGURE_NAMES[f]} {m:.2f}x ({r:.2f} at {layer})" for f, (m, r, layer) in margins(comparisons).items())


def first_failure(comparisons: list[Comparison]) -> Comparison | None:
    return next((c for c in comparisons if not c.passed), None)


def format_table(comparisons: list[Comparison]) -> str:
    """One row per layer: errors, MAX error over PyTorch's same-dtype error (rms / q99 / max), status."""
    rows = [("layer", "shape", "max abs err", "MAX/torch rms", "q99", "max", "cosine", "status")]
    for c in comparisons:
        r = c.ratios
        rows.append((c.layer, "x".join(map(str, c.shape)), f"{c.max_abs:.2e}",
                     *(f"{r[f]:.2f}" if f in r else "-" for f in ("norm", "quantile", "max")),
                     f"{c.cosine:.9f}", c.status))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


def top1_failures(logits: np.ndarray, top1: np.ndarray, top2_gap: np.ndarray, tie) -> list[int]:
    """Steps where `logits`' (T, n_vocab) argmax differs from the reference's `top1`, save near-ties:
    the reference's top two within `tie` (one figure or one per step), which rounding may break
    either way. `verify` and the golden decoder fixture both judge top-1 tokens by it."""
    tie = np.broadcast_to(np.asarray(tie, np.float64), np.shape(top1))
    differ = np.flatnonzero(np.asarray(logits).argmax(-1) != top1)
    return [int(i) for i in differ if top2_gap[i] > tie[i]]


# A top-1 difference is a failure unless the reference's own top two logits lie within this of each
# other (float32 rounding may break such a tie either way: logits err ~5e-5 against float64 on jfk.flac).
TOP1_TIE = 1e-3


def top1_tie(same_logits: np.ndarray, reference_logits: np.ndarray) -> np.ndarray:
    """Per step, the tie below which a top-1 difference is no evidence against MAX: TOP1_TIE, widened to
    twice the yardstick's own largest logit error at that step (in 16-bit a margin PyTorch itself could flip)."""
    return np.maximum(TOP1_TIE, 2 * np.abs(np.asarray(same_logits) - reference_logits).max(-1))
