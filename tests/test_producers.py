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
