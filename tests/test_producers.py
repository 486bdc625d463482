"""The producer contract (maxwhisper/harness/producers.py): `judge` takes exactly the triple (MAX, the
float64 reference, PyTorch in MAX's precision) and says so when handed anything else; every producer
says what it ran."""

from __future__ import annotations

import numpy as np
import pytest

from maxwhisper.harness import producers as p
from maxwhisper.harness.compare import Check
from maxwhisper.harness.registry import RULE

pytestmark = pytest.mark.gate  # the gate for encoder changes (tox -e gate): no transcription

CHECK = Check(RULE, None, "float32")


def _trace(side, dtype, value=1.0):
    return p.Trace(p.Ran(side, dtype, "cpu", "test"), {"x": np.full((1, 4, 8), value)})


def test_judge_compares_max_with_the_reference_in_units_of_the_yardstick():
    noise = np.random.default_rng(0).standard_normal((1, 4, 8)) * 1e-7
    mx, ref, same = _trace("max", "float32", 1.0), _trace("reference", "float64"), _trace("yardstick", "float32")
    same.arrays["x"] = same.arrays["x"] + noise
    mx.arrays["x"] = mx.arrays["x"] + noise
    (row,) = p.judge(mx, ref, same, lambda layer: CHECK)
    assert row.layer == "x" and row.passed
    # errors are measured against the float64 side, and the yardstick's error is the scale
    assert row.max_abs == pytest.approx(np.abs(noise).max())
    mx.arrays["x"] = ref.arrays["x"] + 0.0
    assert p.judge(mx, ref, same, lambda layer: CHECK)[0].max_abs == 0.0  # MAX equals the reference, not the yardstick
    mx.arrays["x"] = mx.arrays["x"] + 1e-3  # 10^4 x the yardstick's error
    assert not p.judge(mx, ref, same, lambda layer: CHECK)[0].passed


BAD = {"max-side-is-torch": [("yardstick", "float32"), ("reference", "float64"), ("yardstick", "float32")],
       "reference-not-float64": [("max", "float32"), ("yardstick", "float32"), ("yardstick", "float32")],
       "no-yardstick": [("max", "float32"), ("reference", "float64"), ("reference", "float64")],
       "yardstick-in-another-precision": [("max", "bfloat16"), ("reference", "float64"), ("yardstick", "float32")]}


@pytest.mark.parametrize("case", list(BAD))
def test_judge_refuses_a_triple_that_is_not_max_reference_yardstick(case):
    traces = [_trace(side, dtype) for side, dtype in BAD[case]]
    with pytest.raises(ValueError, match="judge takes|not one precision"):
        p.judge(*traces, lambda layer: CHECK)


def test_golden_producer_says_it_is_the_stored_float64_reference():
    t = p.golden({"a": np.zeros(3)}, "fixtures/x.npz")
    assert (t.ran.side, t.ran.dtype) == ("golden", "float64") and "fixtures/x.npz" in t.ran.mode


def test_order_widens_the_unit_and_is_computed_only_when_pytorch_alone_fails():
    """The sequential order's error replaces PyTorch's as the unit where it is larger; passed lazily,
    it is computed only for a row that fails against PyTorch's error alone, with the same verdicts."""
    noise = np.random.default_rng(0).standard_normal((1, 4, 8)) * 1e-7
    ref, same, order = _trace("reference", "float64"), _trace("yardstick", "float32"), _trace("order", "float32")
    same.arrays["x"] = ref.arrays["x"] + noise
    order.arrays["x"] = ref.arrays["x"] + 10 * noise
    calls = []

    def lazily():
        calls.append(1)
        return order

    for scale, passed, computed in ((2, True, 0), (20, True, 1), (200, False, 1)):
        mx = _trace("max", "float32")
        mx.arrays["x"] = ref.arrays["x"] + scale * noise
        calls.clear()
        (eager,) = p.judge(mx, ref, same, lambda layer: CHECK, order=order)
        (lazy,) = p.judge(mx, ref, same, lambda layer: CHECK, order=lazily)
        assert eager.passed == lazy.passed == passed and len(calls) == computed, (scale, eager.report())
        assert not p.judge(mx, ref, same, lambda layer: CHECK)[0].passed or scale == 2  # PyTorch's unit alone
    with pytest.raises(ValueError, match="sequential-order"):
        p.judge(_trace("max", "bfloat16"), ref, _trace("yardstick", "bfloat16"), lambda layer: CHECK, order=order)


def test_absolute_guard_binds_only_where_pytorch_meets_it():
    """The fixed float32 target fails MAX where PyTorch float32 meets it; on an input where PyTorch
    itself exceeds it, it is void for that layer (and says so), leaving the derived rule."""
    from maxwhisper.harness.compare import Tolerance, compare

    guard = Check(RULE, Tolerance(atol=1e-4, rtol=0.0), "float32")
    ref = np.random.default_rng(0).standard_normal((1, 4, 8))
    bump = np.zeros_like(ref)
    bump[0, 1, 2] = 3e-4
    near = ref + np.random.default_rng(1).standard_normal(ref.shape) * 1e-5
    failed = compare("x", near + bump, ref, guard, near)  # PyTorch within 1e-4, MAX 3e-4 at one element
    assert not failed.passed and failed.failed_by[0].startswith("absolute guard") and not failed.guard_void
    void = compare("x", near + bump, ref, guard, near + bump * 1.5)  # PyTorch itself 4.5e-4 off there
    assert void.passed and "exceeds the guard here" in void.guard_void and "guard void" in void.report()
